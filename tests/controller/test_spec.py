"""controller.spec without sockets: KServe InferenceService YAML as users write it, into ComponentSpec argv and
fields; every unsupported field, format and URI refused with its path; digests; loading files and folders."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.errors import InvalidInput
from controller.spec import ComponentSpec, InferenceServiceSpec, SpecError, load_paths, load_specs
from model_server.__main__ import parse_args
from tests.harness import ROOT
from tests.models import build_add

DELETE = object()
A = "autoscaling.knative.dev/"

# KServe's sklearn-iris example (docs: "Deploy your first InferenceService"), the format changed to onnx.
KSERVE_IRIS = """
apiVersion: "serving.kserve.io/v1beta1"
kind: "InferenceService"
metadata:
  name: "sklearn-iris"
spec:
  predictor:
    model:
      modelFormat:
        name: onnx
      storageUri: "{uri}"
"""


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return build_add(tmp_path / "models" / "add.onnx")


@pytest.fixture
def doc(tmp_path: Path, model: Path) -> dict[str, Any]:
    """A valid service with every component, whose paths are relative to ``tmp_path`` (the YAML's folder)."""
    (tmp_path / "transformer.py").write_text("")
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "iris", "annotations": {"team": "ml"}},
        "spec": {
            "predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": "models/add.onnx"}},
            "transformer": {
                "containers": [{"name": "kserve-container", "args": ["--model-class", "transformer.py:T"]}]
            },
            "explainer": {"containers": [{"args": []}]},
        },
    }


def parse(doc: dict[str, Any], base_dir: Path) -> InferenceServiceSpec:
    specs = load_specs(yaml.safe_dump(doc, sort_keys=False), base_dir=base_dir)
    assert len(specs) == 1
    return specs[0]


def changed(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with the dotted ``path`` set to ``value`` (or deleted); digits index lists."""
    doc = copy.deepcopy(doc)
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    node = doc
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


def test_kserves_sklearn_iris_example_with_the_onnx_format(tmp_path: Path, model: Path):
    [spec] = load_specs(KSERVE_IRIS.format(uri=model), base_dir=tmp_path, source="iris.yaml")
    assert (spec.name, spec.namespace, spec.source, spec.entry, spec.model_name) == (
        "sklearn-iris",
        "default",
        "iris.yaml",
        "predictor",
        "sklearn-iris",
    )
    assert list(spec.components) == ["predictor"]
    assert spec.components["predictor"] == ComponentSpec(
        "predictor",
        ("--model-name", "sklearn-iris", "--model-path", str(model)),
        autoscaling={A + "metric": "concurrency", A + "min-scale": "1"},
    )
    assert dict(spec.annotations) == {} and dict(spec.labels) == {}


def test_transformer_and_explainer_call_the_predictor_by_its_protocol(tmp_path: Path, doc: dict[str, Any]):
    doc = changed(doc, "spec.predictor.model.protocolVersion", "grpc-v2")
    spec = parse(doc, tmp_path)
    assert spec.entry == "transformer" and list(spec.components) == ["predictor", "transformer", "explainer"]
    transformer, explainer = spec.components["transformer"], spec.components["explainer"]
    assert transformer.server_args == (
        "--model-class",
        f"{tmp_path / 'transformer.py'}:T",
        "--model-name",
        "iris",
        "--predictor-protocol",
        "grpc-v2",
    )
    assert explainer.server_args == ("--explainer", "--model-name", "iris", "--predictor-protocol", "grpc-v2")
    assert transformer.predictor_protocol == explainer.predictor_protocol == "grpc-v2"
    assert spec.components["predictor"].predictor_protocol == "grpc-v2"
    # what the model server makes of it, once the controller adds the addresses
    config = parse_args([*transformer.server_args, "--predictor-host", "127.0.0.1:9000"])
    assert (config.model_name, config.predictor_protocol) == ("iris", "grpc-v2")
    assert config.model_defaults.model_class == f"{tmp_path / 'transformer.py'}:T"
    assert parse_args([*explainer.server_args, "--predictor-host", "127.0.0.1:9000"]).explainer


def test_a_transformers_own_predictor_protocol_wins(tmp_path: Path, doc: dict[str, Any]):
    args = ["--model-class=transformer.py:T", "--predictor-protocol=v2", "--model-name", "iris"]
    spec = parse(changed(doc, "spec.transformer.containers.0.args", args), tmp_path)
    transformer = spec.components["transformer"]
    assert transformer.predictor_protocol == "v2"
    assert transformer.server_args == (
        f"--model-class={tmp_path / 'transformer.py'}:T",
        "--predictor-protocol=v2",
        "--model-name",
        "iris",
    )


def test_the_examples_folder_serves_iris_behind_its_transformer():
    [spec] = load_paths([ROOT / "examples"])
    assert (spec.name, spec.entry, spec.source) == (
        "sklearn-iris",
        "transformer",
        str(ROOT / "examples" / "sklearn-iris.yaml"),
    )
    predictor, transformer = spec.components["predictor"], spec.components["transformer"]
    assert predictor.server_args == (
        "--model-name",
        "sklearn-iris",
        "--model-path",
        str(ROOT / "examples" / "models" / "sklearn-iris"),
    )
    assert transformer.server_args[:2] == (
        "--model-class",
        f"{ROOT / 'examples' / 'iris_transformer.py'}:IrisTransformer",
    )
    assert transformer.predictor_protocol == predictor.predictor_protocol


@pytest.mark.parametrize(
    "layout, served",
    [
        ("file", "models/add.onnx"),
        ("folder with model.onnx", "flat/model.onnx"),
        ("triton folder", "triton"),
        ("file uri", "models/add.onnx"),
    ],
)
def test_storage_uri_forms(tmp_path: Path, doc: dict[str, Any], layout: str, served: str):
    build_add(tmp_path / "triton" / "3" / "model.onnx")
    build_add(tmp_path / "flat" / "model.onnx")
    (tmp_path / "triton" / "config.yaml").write_text("instances: 1\n")
    uri = {
        "file": "models/add.onnx",
        "folder with model.onnx": "./flat",
        "triton folder": "triton",
        "file uri": f"file://{tmp_path / 'models' / 'add.onnx'}",
    }[layout]
    spec = parse(changed(doc, "spec.predictor.model.storageUri", uri), tmp_path)
    assert spec.components["predictor"].server_args == ("--model-name", "iris", "--model-path", str(tmp_path / served))


def test_relative_storage_uri_resolves_against_the_yaml_folder_not_the_working_directory(
    tmp_path: Path, doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (tmp_path / "iris.yaml").write_text(yaml.safe_dump(doc))
    [spec] = load_paths([tmp_path / "iris.yaml"])
    assert spec.components["predictor"].server_args[-1] == str(tmp_path / "models" / "add.onnx")


def test_component_fields(tmp_path: Path, doc: dict[str, Any]):
    fields = {
        "minReplicas": 0,
        "maxReplicas": 4,
        "containerConcurrency": 8,
        "timeout": 30,
        "canaryTrafficPercent": 10,
        "scaleTarget": 5,
        "scaleMetric": "rps",
        "batcher": {"maxBatchSize": 16, "maxLatency": 2},
    }
    spec = parse(changed(doc, "spec.predictor", {**doc["spec"]["predictor"], **fields}), tmp_path)
    predictor = spec.components["predictor"]
    assert (predictor.min_replicas, predictor.max_replicas, predictor.container_concurrency, predictor.timeout) == (
        0,
        4,
        8,
        30.0,
    )
    assert (predictor.canary_traffic_percent, predictor.scale_target, predictor.scale_metric) == (10, 5, "rps")
    assert predictor.server_args[-4:] == ("--batch-max-rows", "16", "--batch-max-delay-us", "2000")
    assert dict(predictor.autoscaling) == {
        A + "min-scale": "0",
        A + "max-scale": "4",
        A + "target": "5",
        A + "metric": "rps",
    }
    transformer = spec.components["transformer"]  # fields are per component
    assert (transformer.min_replicas, transformer.canary_traffic_percent, transformer.timeout) == (1, None, 300.0)


MAX_BELOW_MIN = [  # the message names where each number came from: the field, or the annotation as written
    ({"maxReplicas": 1, "minReplicas": 2}, {}, "spec.predictor.maxReplicas: 1 is below spec.predictor.minReplicas 2"),
    (
        {"minReplicas": 2},
        {A + "max-scale": "1"},
        f'metadata.annotations["{A}max-scale"]: 1 is below spec.predictor.minReplicas 2',
    ),
    (
        {"maxReplicas": 1},
        {A + "minScale": "3"},
        f'spec.predictor.maxReplicas: 1 is below metadata.annotations["{A}minScale"] 3',
    ),
]


@pytest.mark.parametrize("fields, annotations, message", MAX_BELOW_MIN, ids=["fields", "max-scale", "minScale"])
def test_max_replicas_below_min_names_where_each_came_from(
    tmp_path: Path, doc: dict[str, Any], fields: dict[str, int], annotations: dict[str, str], message: str
):
    doc = changed(doc, "metadata.annotations", annotations)
    with pytest.raises(SpecError) as caught:
        parse(changed(doc, "spec.predictor", {**doc["spec"]["predictor"], **fields}), tmp_path)
    assert caught.value.message == message


COMPONENT_MAX_BELOW_MIN = [  # the same, across the service's annotations, the component's and its fields
    (
        {},
        {A + "min-scale": "3"},
        {A + "maxScale": "2"},
        f'spec.predictor.annotations["{A}maxScale"]: 2 is below metadata.annotations["{A}min-scale"] 3',
    ),
    (
        {"maxReplicas": 2},
        {A + "min-scale": "1"},
        {A + "minScale": "3"},
        f'spec.predictor.maxReplicas: 2 is below spec.predictor.annotations["{A}minScale"] 3',
    ),
    (
        {"minReplicas": 4},
        {A + "max-scale": "9"},
        {A + "max-scale": "3"},
        f'spec.predictor.annotations["{A}max-scale"]: 3 is below spec.predictor.minReplicas 4',
    ),
]


@pytest.mark.parametrize(
    "fields, service, own, message", COMPONENT_MAX_BELOW_MIN, ids=["annotations", "maxReplicas", "minReplicas"]
)
def test_max_below_min_names_the_components_own_annotation(
    tmp_path: Path,
    doc: dict[str, Any],
    fields: dict[str, int],
    service: dict[str, str],
    own: dict[str, str],
    message: str,
):
    doc = changed(doc, "metadata.annotations", service)
    doc = changed(doc, "spec.predictor", {**doc["spec"]["predictor"], **fields, "annotations": own})
    with pytest.raises(SpecError) as caught:
        parse(doc, tmp_path)
    assert caught.value.message == message


def test_a_components_annotations_apply_to_it_only_and_win_over_the_services(tmp_path: Path, doc: dict[str, Any]):
    service = {A + "min-scale": "2", A + "max-scale": "5", A + "target": "7", "team": "ml"}
    doc = changed(doc, "metadata.annotations", service)
    predictor_own = {A + "minScale": "3", A + "target": "9", A + "max-scale": "8", "team": "fraud", "note": "x"}
    doc = changed(doc, "spec.predictor", {**doc["spec"]["predictor"], "annotations": predictor_own, "maxReplicas": 6})
    doc = changed(doc, "spec.predictor.labels", {"app": "iris-predictor"})
    doc = changed(doc, "spec.transformer.annotations", {A + "max-scale": "4", A + "metric": "rps"})
    spec = parse(changed(doc, "spec.transformer.minReplicas", 1), tmp_path)
    predictor, transformer, explainer = (spec.components[c] for c in ("predictor", "transformer", "explainer"))
    # predictor: its own min-scale and target win over the service's; its maxReplicas field wins over both
    assert (predictor.min_replicas, predictor.max_replicas, predictor.scale_target) == (3, 6, 9)
    assert dict(predictor.autoscaling) == {
        A + "max-scale": "6",
        A + "metric": "concurrency",
        A + "min-scale": "3",
        A + "target": "9",
    }
    # transformer: its minReplicas field wins; its own max-scale and metric; the service's target
    assert (transformer.min_replicas, transformer.max_replicas, transformer.scale_target) == (1, 4, 7)
    assert transformer.scale_metric == "rps"
    # explainer: the service's annotations only
    assert (explainer.min_replicas, explainer.max_replicas, explainer.scale_target) == (2, 5, 7)
    assert explainer.scale_metric == "concurrency"
    # each level keeps its own annotations and labels as written
    assert dict(predictor.annotations) == predictor_own and dict(predictor.labels) == {"app": "iris-predictor"}
    assert dict(transformer.annotations) == {A + "max-scale": "4", A + "metric": "rps"}
    assert dict(explainer.annotations) == {} and dict(explainer.labels) == {}
    assert dict(spec.annotations) == service and dict(spec.labels) == {}


def test_a_components_own_annotations_and_labels_define_its_revision(tmp_path: Path, doc: dict[str, Any]):
    first = parse(doc, tmp_path).components
    annotated = parse(changed(doc, "spec.transformer.annotations", {"team": "ml"}), tmp_path).components
    assert annotated["transformer"].digest() != first["transformer"].digest()
    assert annotated["predictor"].digest() == first["predictor"].digest()
    labelled = parse(changed(doc, "spec.transformer.labels", {"app": "iris"}), tmp_path).components
    assert labelled["transformer"].digest() != first["transformer"].digest()


def test_component_annotations_are_warned_about_at_their_own_path(tmp_path: Path, doc: dict[str, Any]):
    until_autoscaler = "recorded; the local backend runs max(minReplicas, 1) replicas until the autoscaler lands"
    doc = changed(doc, "metadata.annotations", {A + "window": "1m"})
    doc = changed(doc, "spec.predictor.annotations", {A + "min-scale": "0", A + "window": "2m", "team": "ml"})
    doc = changed(
        doc, "spec.explainer.annotations", {A + "min-scale": "2", "serving.kserve.io/deploymentMode": "Serverless"}
    )
    spec = parse(doc, tmp_path)
    assert spec.warnings == (
        f'metadata.annotations["{A}window"]: {until_autoscaler}',
        f'spec.predictor.annotations["{A}min-scale"]: 0 recorded; the local backend runs 1 replica until scale to '
        "zero lands",
        f'spec.predictor.annotations["{A}window"]: {until_autoscaler}',
    )
    assert spec.components["predictor"].autoscaling[A + "window"] == "2m"
    assert spec.components["transformer"].autoscaling[A + "window"] == "1m"
    assert spec.components["explainer"].min_replicas == 2


@pytest.mark.parametrize("key", ["metric-aggregation-algorithm", "metricAggregationAlgorithm"])
@pytest.mark.parametrize("value", ["linear", "weightedExponential", "weighted-exponential"])
def test_the_metric_aggregation_algorithm_is_recorded_with_a_warning(
    tmp_path: Path, doc: dict[str, Any], key: str, value: str
):
    until_autoscaler = "recorded; the local backend runs max(minReplicas, 1) replicas until the autoscaler lands"
    spec = parse(changed(doc, "metadata.annotations", {A + key: value, A + "window": "2m"}), tmp_path)
    assert spec.warnings == (
        f'metadata.annotations["{A}{key}"]: {until_autoscaler}',
        f'metadata.annotations["{A}window"]: {until_autoscaler}',
    )
    for component in spec.components.values():
        assert component.autoscaling[A + "metric-aggregation-algorithm"] == value
        assert component.autoscaling[A + "window"] == "2m"


def test_kserves_batcher_defaults(tmp_path: Path, doc: dict[str, Any]):
    spec = parse(changed(doc, "spec.predictor.batcher", {}), tmp_path)
    assert spec.components["predictor"].server_args[-4:] == ("--batch-max-rows", "32", "--batch-max-delay-us", "500000")


def test_autoscaling_annotations_apply_to_every_component_and_fields_win(tmp_path: Path, doc: dict[str, Any]):
    annotations = {
        A + "minScale": "2",
        A + "max-scale": "5",
        A + "target": "7",
        A + "metric": "rps",
        A + "window": "1m30s",
        A + "class": "kpa.autoscaling.knative.dev",
        "serving.kserve.io/deploymentMode": "Serverless",
        "team": "ml",
    }
    doc = changed(doc, "metadata.annotations", annotations)
    doc = changed(doc, "metadata.labels", {"app": "iris"})
    spec = parse(changed(doc, "spec.transformer.minReplicas", 1), tmp_path)
    predictor, transformer = spec.components["predictor"], spec.components["transformer"]
    assert (predictor.min_replicas, predictor.max_replicas, predictor.scale_target, predictor.scale_metric) == (
        2,
        5,
        7,
        "rps",
    )
    assert (transformer.min_replicas, transformer.max_replicas) == (1, 5)
    assert dict(predictor.autoscaling) == {
        A + "class": "kpa.autoscaling.knative.dev",
        A + "max-scale": "5",
        A + "metric": "rps",
        A + "min-scale": "2",
        A + "target": "7",
        A + "window": "1m30s",
    }
    assert transformer.autoscaling[A + "min-scale"] == "1"
    assert dict(spec.annotations) == annotations and dict(spec.labels) == {"app": "iris"}


def test_a_fractional_knative_target_stays_an_annotation(tmp_path: Path, doc: dict[str, Any]):
    spec = parse(changed(doc, "metadata.annotations", {A + "target": "0.5"}), tmp_path)
    predictor = spec.components["predictor"]
    assert predictor.scale_target is None and predictor.autoscaling[A + "target"] == "0.5"


def test_digest_defines_a_revision_but_the_canary_percent_does_not(tmp_path: Path, doc: dict[str, Any]):
    first = parse(doc, tmp_path).components["predictor"]
    reordered = {key: doc[key] for key in reversed(list(doc))}
    reordered["spec"]["predictor"]["model"] = dict(reversed(list(doc["spec"]["predictor"]["model"].items())))
    assert parse(reordered, tmp_path).components["predictor"].digest() == first.digest()
    assert len(first.digest()) == 12 and first.digest() == first.digest()

    canary = parse(changed(doc, "spec.predictor.canaryTrafficPercent", 10), tmp_path).components["predictor"]
    assert canary.canary_traffic_percent == 10 and canary.digest() == first.digest()
    more_args = parse(changed(doc, "spec.predictor.model.args", ["--grace-period", "5"]), tmp_path)
    assert more_args.components["predictor"].digest() != first.digest()
    scaled = parse(changed(doc, "spec.predictor.minReplicas", 2), tmp_path)
    assert scaled.components["predictor"].digest() != first.digest()
    env = parse(changed(doc, "spec.predictor.model.env", [{"name": "A", "value": "1"}]), tmp_path)
    assert env.components["predictor"].env == (("A", "1"),)
    assert env.components["predictor"].digest() != first.digest()


def test_env_resources_and_image_are_kept(tmp_path: Path, doc: dict[str, Any]):
    container = {
        "image": "kserve/iris-transformer:1",
        "args": ["--model-class", "transformer.py:T"],
        "env": [{"name": "LOG", "value": "debug"}, {"name": "EMPTY"}],
        "resources": {"limits": {"cpu": "1", "memory": "2Gi"}, "requests": {"cpu": "500m"}},
    }
    spec = parse(changed(doc, "spec.transformer.containers", [container]), tmp_path)
    transformer = spec.components["transformer"]
    assert transformer.image == "kserve/iris-transformer:1"
    assert transformer.env == (("LOG", "debug"), ("EMPTY", ""))
    assert transformer.resources == {"limits": {"cpu": "1", "memory": "2Gi"}, "requests": {"cpu": "500m"}}


def test_fields_recorded_without_a_local_effect_are_warned_about_one_line_each(tmp_path: Path, doc: dict[str, Any]):
    until_autoscaler = "recorded; the local backend runs max(minReplicas, 1) replicas until the autoscaler lands"
    annotations = {A + "minScale": "2", A + "target": "7", A + "window": "1m", A + "initial-scale": "3"}
    doc = changed(doc, "metadata.annotations", annotations)
    doc = changed(doc, "spec.predictor.model.modelFormat.version", "1")
    doc = changed(doc, "spec.predictor.model.resources", {"limits": {"nvidia.com/gpu": 1}})
    doc = changed(doc, "spec.predictor", {**doc["spec"]["predictor"], "maxReplicas": 4, "scaleTarget": 5})
    doc = changed(doc, "spec.predictor.scaleMetric", "concurrency")
    container = {"name": "iris-transformer", "image": "kserve/t:1", "resources": {"requests": {"cpu": "1"}}}
    doc = changed(doc, "spec.transformer.containers.0", {**doc["spec"]["transformer"]["containers"][0], **container})
    doc = changed(doc, "spec.explainer.minReplicas", 0)
    spec = parse(doc, tmp_path)
    assert spec.warnings == (
        f'metadata.annotations["{A}target"]: {until_autoscaler}',
        f'metadata.annotations["{A}window"]: {until_autoscaler}',
        f'metadata.annotations["{A}initial-scale"]: {until_autoscaler}',
        "spec.predictor.model.modelFormat.version: recorded, not checked: the model server loads the ONNX model "
        "storageUri names",
        "spec.predictor.model.resources: recorded for a Kubernetes backend; the local backend enforces no requests "
        "or limits; a GPU limit reserves no GPU: the model server uses CUDA when onnxruntime can, else the CPU",
        f"spec.predictor.maxReplicas: {until_autoscaler}",
        f"spec.predictor.scaleTarget: {until_autoscaler}",
        f"spec.predictor.scaleMetric: {until_autoscaler}",
        "spec.transformer.containers[0].name: recorded; the local backend names each replica after its revision "
        "(<revision>-<n>)",
        "spec.transformer.containers[0].image: recorded for a Kubernetes backend; the local backend runs "
        "servelane's own model server",
        "spec.transformer.containers[0].resources: recorded for a Kubernetes backend; the local backend enforces "
        "no requests or limits",
        "spec.explainer.minReplicas: 0 recorded; the local backend runs 1 replica until scale to zero lands",
    )
    assert spec.components["predictor"].max_replicas == 4  # still recorded: seams for the autoscaler


def test_a_spec_kserve_users_write_has_no_warnings(tmp_path: Path, doc: dict[str, Any]):
    annotations = {A + "min-scale": "2", "serving.kserve.io/enable-tag-routing": "true", "team": "ml"}
    doc = changed(doc, "metadata.annotations", annotations)
    doc = changed(doc, "spec.predictor.minReplicas", 1)
    doc = changed(doc, "spec.predictor.canaryTrafficPercent", 10)
    doc = changed(doc, "spec.predictor.containerConcurrency", 4)
    doc = changed(doc, "spec.predictor.timeout", 30)
    assert doc["spec"]["transformer"]["containers"][0]["name"] == "kserve-container"  # KServe's own name: no warning
    assert parse(doc, tmp_path).warnings == ()
    assert parse(changed(doc, "metadata.annotations", {A + "min-scale": "0"}), tmp_path).warnings == (
        f'metadata.annotations["{A}min-scale"]: 0 recorded; the local backend runs 1 replica until scale to zero lands',
    )


def test_the_older_onnx_shorthand(tmp_path: Path, doc: dict[str, Any]):
    spec = parse(changed(doc, "spec.predictor", {"onnx": {"storageUri": "models/add.onnx"}}), tmp_path)
    assert spec.components["predictor"].server_args[-1] == str(tmp_path / "models" / "add.onnx")


def test_a_custom_predictor_class(tmp_path: Path, doc: dict[str, Any]):
    (tmp_path / "weights").mkdir()
    args = ["--model-class", "transformer.py:T", "--model-path", "weights"]
    spec = parse(changed(doc, "spec.predictor", {"containers": [{"args": args}], "minReplicas": 2}), tmp_path)
    predictor = spec.components["predictor"]
    assert predictor.server_args == (
        "--model-class",
        f"{tmp_path / 'transformer.py'}:T",
        "--model-path",
        str(tmp_path / "weights"),
        "--model-name",
        "iris",
    )
    assert predictor.min_replicas == 2 and predictor.predictor_protocol == "v1"


REFUSED = [
    (
        "spec.predictor.model.runtime",
        "kserve-onnxruntime",
        "spec.predictor.model.runtime: not supported (servelane runs its own model server)",
    ),
    (
        "spec.predictor.model.modelFormat.name",
        "sklearn",
        "spec.predictor.model.modelFormat.name: 'sklearn' is not served: servelane serves ONNX models only: "
        "convert the model to ONNX (skl2onnx",
    ),
    ("spec.predictor.model.modelFormat.name", "xgboost", "spec.predictor.model.modelFormat.name: 'xgboost' is not"),
    ("spec.predictor.model.modelFormat.name", "triton", "spec.predictor.model.modelFormat.name: 'triton' is not"),
    ("spec.predictor.model.modelFormat", DELETE, "spec.predictor.model.modelFormat: required"),
    ("spec.predictor.model.storageUri", DELETE, "spec.predictor.model.storageUri: required"),
    ("spec.predictor.model.storage", {"key": "x"}, "spec.predictor.model.storage: not supported"),
    ("spec.predictor.model.protocolVersion", "v3", "spec.predictor.model.protocolVersion: expected one of v1, v2"),
    ("spec.predictor.model.args", ["--model-path", "x"], "spec.predictor.model.args: --model-path is not allowed"),
    ("spec.predictor.model.args", ["--model-n", "x"], "spec.predictor.model.args: --model-n is not allowed"),
    ("spec.predictor.model.args", ["--http-port", "1"], "spec.predictor.model.args: --http-port is set by the"),
    ("spec.predictor.model.args", ["--grpc-port=1"], "spec.predictor.model.args: --grpc-port is set by the"),
    ("spec.predictor.model.args", ["--no-such-flag"], "spec.predictor.model.args: unrecognized arguments"),
    ("spec.predictor.model.args", ["--batch-max-rows", "x"], "spec.predictor.model.args: argument --batch-max-rows"),
    ("spec.predictor.model.args", ["--help"], "spec.predictor.model.args: not valid model-server flags"),
    ("spec.predictor.model.args", ["--grace_period", "5"], "spec.predictor.model.args: --grace_period: servelane"),
    ("spec.predictor.model.args", [5], "spec.predictor.model.args: expected a list of strings"),
    (
        "spec.predictor.model.env",
        [{"name": "A", "valueFrom": {"secretKeyRef": {}}}],
        "spec.predictor.model.env[0].valueFrom: not supported",
    ),
    ("spec.predictor.model.env", [{"name": "A", "value": 1}], "spec.predictor.model.env[0].value: expected a string"),
    ("spec.predictor.model.env", [{"name": "A"}, {"name": "A"}], "spec.predictor.model.env[1].name: A is given twice"),
    (
        "spec.predictor.model.resources",
        {"limits": {"cpu": "1"}, "claims": []},
        "spec.predictor.model.resources.claims: not supported",
    ),
    ("spec.predictor.sklearn", {"storageUri": "x"}, "spec.predictor.sklearn: not served: servelane serves ONNX"),
    ("spec.predictor.pytorch", {"storageUri": "x"}, "spec.predictor.pytorch: not served: servelane serves ONNX"),
    ("spec.predictor.onnx", {"storageUri": "models/add.onnx"}, "spec.predictor: give exactly one of model, onnx"),
    ("spec.predictor.model", DELETE, "spec.predictor: give exactly one of model, onnx, containers"),
    ("spec.predictor.logger", {"mode": "all"}, "spec.predictor.logger: not supported (supported here: model"),
    ("spec.predictor.serviceAccountName", "sa", "spec.predictor.serviceAccountName: not supported"),
    ("spec.predictor.nodeSelector", {"gpu": "a100"}, "spec.predictor.nodeSelector: not supported"),
    ("spec.predictor.tolerations", [], "spec.predictor.tolerations: not supported"),
    ("spec.predictor.volumes", [], "spec.predictor.volumes: not supported"),
    (
        "spec.predictor.model.annotations",
        {"a": "b"},
        "spec.predictor.model.annotations: not supported here: give annotations in metadata.annotations or "
        "spec.<component>.annotations",
    ),
    ("spec.transformer.containers.0.labels", {"a": "b"}, "spec.transformer.containers[0].labels: not supported here"),
    ("spec.annotations", {"a": "b"}, "spec.annotations: not supported here: give annotations in metadata"),
    (
        "spec.predictor.labels",
        {"serving.kserve.io/inferenceservice": "iris"},
        'spec.predictor.labels["serving.kserve.io/inferenceservice"]: not supported (servelane sets no KServe',
    ),
    ("spec.explainer.labels", {"replicas": 2}, 'spec.explainer.labels["replicas"]: keys and values must be strings'),
    ("spec.transformer.annotations", ["a"], "spec.transformer.annotations: expected a mapping, got list"),
    ("spec.predictor.scaleMetric", "cpu", "spec.predictor.scaleMetric: 'cpu' is not supported (no HPA here"),
    ("spec.predictor.scaleMetric", "memory", "spec.predictor.scaleMetric: 'memory' is not supported (no HPA here"),
    ("spec.predictor.scaleMetricType", "Utilization", "spec.predictor.scaleMetricType: not supported (no HPA"),
    ("spec.predictor.scaleTarget", 0, "spec.predictor.scaleTarget: expected an integer of at least 1"),
    ("spec.predictor.timeout", 601, "spec.predictor.timeout: expected seconds, more than 0 and at most 600"),
    ("spec.predictor.timeout", 0, "spec.predictor.timeout: expected seconds"),
    ("spec.predictor.timeout", "30s", "spec.predictor.timeout: expected seconds"),
    ("spec.predictor.canaryTrafficPercent", 101, "spec.predictor.canaryTrafficPercent: expected an integer from 0"),
    ("spec.predictor.canaryTrafficPercent", True, "spec.predictor.canaryTrafficPercent: expected an integer"),
    ("spec.predictor.minReplicas", -1, "spec.predictor.minReplicas: expected an integer of at least 0"),
    ("spec.predictor.minReplicas", "2", "spec.predictor.minReplicas: expected an integer"),
    ("spec.predictor.maxReplicas", 0.5, "spec.predictor.maxReplicas: expected an integer"),
    ("spec.predictor.containerConcurrency", -1, "spec.predictor.containerConcurrency: expected an integer from 0"),
    ("spec.predictor.batcher", {"maxBatchSize": 0}, "spec.predictor.batcher.maxBatchSize: expected an integer of"),
    ("spec.predictor.batcher", {"timeout": 5}, "spec.predictor.batcher.timeout: not supported"),
    ("spec.predictor.workerSpec", {}, "spec.predictor.workerSpec: not supported"),
    ("spec.predictor", DELETE, "spec.predictor: required"),
    (
        "spec.transformer.containers.0.command",
        ["python"],
        "spec.transformer.containers[0].command: not supported (servelane always runs its own model server",
    ),
    (
        "spec.transformer.containers.0.ports",
        [{"containerPort": 8080}],
        "spec.transformer.containers[0].ports: not supported",
    ),
    (
        "spec.transformer.containers.0.args",
        ["--model-name", "iris"],
        "spec.transformer.containers[0].args: a transformer is a Python class",
    ),
    (
        "spec.transformer.containers.0.args",
        ["--model-class", "missing.py:T"],
        "spec.transformer.containers[0].args: --model-class missing.py:T: ",
    ),
    (
        "spec.transformer.containers.0.args",
        ["--model-class", "transformer.py:T", "--model-name", "other"],
        "spec.transformer.containers[0].args: --model-name other differs from metadata.name iris",
    ),
    (
        "spec.transformer.containers.0.args",
        ["--model-class", "transformer.py:T", "--predictor-host", "h:1"],
        "spec.transformer.containers[0].args: --predictor-host is set by the controller",
    ),
    (
        "spec.transformer.containers.0.args",
        ["--model-class", "transformer.py:T", "--predictor-protocol", "rest"],
        "spec.transformer.containers[0].args: --predictor-protocol must be one of v1, v2, grpc-v2",
    ),
    ("spec.transformer.containers", [], "spec.transformer.containers: expected exactly one container"),
    ("spec.transformer.containers", [{"args": []}, {"args": []}], "spec.transformer.containers: expected exactly one"),
    ("spec.transformer.containers", DELETE, "spec.transformer.containers: required"),
    ("spec.explainer.alibi", {"type": "AnchorTabular"}, "spec.explainer.alibi: not supported: servelane's explainer"),
    ("spec.explainer.art", {"type": "SquareAttack"}, "spec.explainer.art: not supported"),
    (
        "spec.explainer.containers.0.args",
        ["--model-repository", "models"],
        "spec.explainer.containers[0].args: --model-repository is not supported",
    ),
    ("spec.predictor.batcher", {"maxBatchSize": 8}, None),  # valid: a control for the next one
    ("spec.predictor.model.args", ["--batch-max-rows", "8"], None),
    ("spec.inferenceGraph", {}, "spec.inferenceGraph: not supported (supported here: predictor, transformer"),
    ("status", {"url": "x"}, "status: not supported"),
    ("apiVersion", "serving.kserve.io/v1alpha1", "apiVersion: expected serving.kserve.io/v1beta1, got"),
    ("kind", "Deployment", "kind: expected InferenceService, got 'Deployment'"),
    ("metadata.name", "Iris", "metadata.name: 'Iris' is not a DNS-1035 label"),
    ("metadata.name", "1ris", "metadata.name: '1ris' is not a DNS-1035 label"),
    ("metadata.name", "a" * 46, "metadata.name: 'aaaa"),
    ("metadata.name", DELETE, "metadata.name: required"),
    ("metadata.namespace", "Kserve_Test", "metadata.namespace: 'Kserve_Test' is not a DNS-1123 label"),
    ("metadata.generateName", "iris-", "metadata.generateName: not supported"),
    (
        "metadata.labels",
        {"networking.kserve.io/visibility": "cluster-local"},
        'metadata.labels["networking.kserve.io/visibility"]: not supported',
    ),
    ("metadata.labels", {"replicas": 2}, 'metadata.labels["replicas"]: keys and values must be strings'),
]
ANNOTATIONS_REFUSED = [
    ({"serving.kserve.io/deploymentMode": "RawDeployment"}, "only Serverless is supported, got 'RawDeployment'"),
    ({"serving.kserve.io/enable-prometheus-scraping": "true"}, "not supported (servelane reads no other"),
    ({"serving.knative.dev/rollout-duration": "60s"}, "not supported"),
    ({"networking.knative.dev/visibility": "cluster-local"}, "not supported"),
    ({A + "class": "hpa.autoscaling.knative.dev"}, "'hpa.autoscaling.knative.dev' is not supported (no HPA here"),
    ({A + "metric": "cpu"}, "'cpu' is not supported (no HPA here"),
    ({A + "scale-up-rate": "2"}, "not a supported Knative autoscaling annotation (supported: min-scale"),
    ({A + "metric-aggregation-algorithm": "WeightedExponential"}, "expected one of linear, weighted-exponential, weig"),
    ({A + "metricAggregationAlgorithm": "exponential"}, "expected one of linear, weighted-exponential"),
    ({A + "metric-aggregation-algorithm": "linear", A + "metricAggregationAlgorithm": "linear"}, "is given twice"),
    ({A + "min-scale": "-1"}, "expected an integer of at least 0, got '-1'"),
    ({A + "maxScale": "two"}, "expected an integer of at least 0, got 'two'"),
    ({A + "target": "0"}, "expected a number at least 0.01"),
    ({A + "window": "1s"}, "expected a duration from 6s to 3600s"),
    ({A + "window": "60"}, "expected a duration"),
    ({A + "scale-down-delay": "2h"}, "expected a duration from 0s to 3600s"),
    ({A + "panic-threshold-percentage": "100"}, "expected a number from 110 to 1000"),
    ({A + "target-utilization-percentage": "nan"}, "expected a number from 1 to 100"),
    ({A + "activation-scale": "0"}, "expected an integer of at least 1"),
    ({A + "min-scale": "1", A + "minScale": "2"}, "is given twice (under both of its spellings)"),
    ({A + "min-scale": "3", A + "max-scale": "2"}, "2 is below min-scale 3"),
    ({A + "initial-scale": 1}, "keys and values must be strings (quote numbers"),
    ({"serving.kserve.io/enable-tag-routing": "false"}, 'only "true" is supported (servelane always routes tags'),
]


@pytest.mark.parametrize("path, value, message", REFUSED, ids=[f"{p}={v!r}"[:60] for p, v, _ in REFUSED])
def test_unsupported_fields_are_refused_naming_the_field(
    tmp_path: Path, doc: dict[str, Any], path: str, value: Any, message: str | None
):
    doc = changed(doc, path, value)
    if message is None:
        parse(doc, tmp_path)
        return
    with pytest.raises(SpecError) as caught:
        parse(doc, tmp_path)
    assert caught.value.message.startswith(message), caught.value.message


def test_batching_twice_is_refused(tmp_path: Path, doc: dict[str, Any]):
    doc = changed(doc, "spec.predictor.batcher", {"maxBatchSize": 8})
    with pytest.raises(SpecError, match=r"^spec\.predictor\.batcher: give batching either here or as --batch-\* args"):
        parse(changed(doc, "spec.predictor.model.args", ["--batch-max-rows", "8"]), tmp_path)


@pytest.mark.parametrize(
    "at",
    [
        "metadata.annotations",
        "spec.predictor.annotations",
        "spec.transformer.annotations",
        "spec.explainer.annotations",
    ],
)
@pytest.mark.parametrize("annotations, message", ANNOTATIONS_REFUSED, ids=[str(a)[:60] for a, _ in ANNOTATIONS_REFUSED])
def test_reserved_and_bad_annotations_are_refused(
    tmp_path: Path, doc: dict[str, Any], at: str, annotations: dict[str, str], message: str
):
    """A component's own annotations get the service's checks, and the error names the component's path."""
    with pytest.raises(SpecError) as caught:
        parse(changed(doc, at, annotations), tmp_path)
    assert caught.value.message.startswith(f'{at}["'), caught.value.message
    assert message in caught.value.message


def test_a_bad_component_annotation_names_its_exact_path(tmp_path: Path, doc: dict[str, Any]):
    with pytest.raises(SpecError) as caught:
        parse(changed(doc, "spec.predictor.annotations", {"team": "ml", A + "min-scale": "-1"}), tmp_path)
    assert (
        caught.value.message
        == f"spec.predictor.annotations[\"{A}min-scale\"]: expected an integer of at least 0, got '-1'"
    )
    with pytest.raises(SpecError) as caught:
        parse(changed(doc, "spec.explainer.annotations", {A + "maxScale": "3", A + "minScale": "4"}), tmp_path)
    assert caught.value.message == f'spec.explainer.annotations["{A}maxScale"]: 3 is below min-scale 4'


@pytest.mark.parametrize(
    "uri",
    [
        "gs://kfserving-examples/models/sklearn/1.0/model",
        "s3://bucket/model",
        "pvc://claim/model",
        "hdfs://namenode/model",
        "http://example.com/model.onnx",
        "https://example.com/model.onnx",
        "oci://registry/model:1",
        "hf://org/model",
        "webhdfs://host/model",
        "azure://account/model",
    ],
)
def test_remote_storage_uris_are_refused(tmp_path: Path, doc: dict[str, Any], uri: str):
    scheme = uri.split("://")[0]
    with pytest.raises(SpecError) as caught:
        parse(changed(doc, "spec.predictor.model.storageUri", uri), tmp_path)
    assert caught.value.message.startswith(
        f"spec.predictor.model.storageUri: {scheme}:// is not supported: servelane downloads nothing"
    )


@pytest.mark.parametrize(
    "make, uri, message",
    [
        (None, "absent.onnx", "does not exist"),
        (None, "file://host/x.onnx", "names a host"),
        ("weights.pkl", "weights.pkl", "is not an .onnx file; expected an .onnx file, a folder holding model.onnx"),
        ("repo/m/1/model.onnx", "repo", "holds neither model.onnx nor version folders"),
        ("flat/model.onnx+config", "flat", "has config.yaml beside model.onnx"),
    ],
)
def test_storage_paths_that_are_not_one_onnx_model(
    tmp_path: Path, doc: dict[str, Any], make: str | None, uri: str, message: str
):
    if make == "weights.pkl":
        (tmp_path / make).write_bytes(b"")
    elif make == "flat/model.onnx+config":
        build_add(tmp_path / "flat" / "model.onnx")
        (tmp_path / "flat" / "config.yaml").write_text("instances: 1\n")
    elif make is not None:
        build_add(tmp_path / make)
    with pytest.raises(SpecError) as caught:
        parse(changed(doc, "spec.predictor.model.storageUri", uri), tmp_path)
    assert caught.value.message.startswith("spec.predictor.model.storageUri: ")
    assert message in caught.value.message


def test_a_spec_error_is_a_400_and_names_the_file_and_document(tmp_path: Path, doc: dict[str, Any]):
    bad = changed(doc, "spec.predictor.model.runtime", "x")
    text = yaml.safe_dump(doc) + "---\n# empty\n---\n" + yaml.safe_dump(changed(bad, "metadata.name", "other"))
    with pytest.raises(SpecError) as caught:
        load_specs(text, base_dir=tmp_path, source="two.yaml")
    assert isinstance(caught.value, InvalidInput) and caught.value.http_status == 400
    assert caught.value.message == (
        "spec.predictor.model.runtime: not supported (servelane runs its own model server) (in two.yaml, document 3)"
    )


def test_yaml_problems(tmp_path: Path):
    with pytest.raises(SpecError, match=r"^x\.yaml: not valid YAML"):
        load_specs("a: [", base_dir=tmp_path, source="x.yaml")
    with pytest.raises(SpecError, match="key 'name' given twice"):
        load_specs("metadata:\n  name: a\n  name: b\n", base_dir=tmp_path)
    with pytest.raises(SpecError, match=r"^document: expected a mapping, got list"):
        load_specs("- 1\n", base_dir=tmp_path)
    assert load_specs("---\n---\n# nothing\n", base_dir=tmp_path) == []


def test_load_paths_reads_a_folders_yaml_files_sorted_and_refuses_a_duplicate(tmp_path: Path, doc: dict[str, Any]):
    folder = tmp_path / "specs"
    (folder / "nested").mkdir(parents=True)
    (folder / "models").symlink_to(tmp_path / "models")
    (folder / "transformer.py").write_text("")
    (folder / "b.yml").write_text(yaml.safe_dump(changed(doc, "metadata.name", "bravo")))
    two = [changed(doc, "metadata.name", "alpha"), changed(doc, "metadata.namespace", "team")]
    (folder / "a.yaml").write_text(yaml.safe_dump_all(two))
    (folder / "notes.txt").write_text("not yaml")
    (folder / "nested" / "c.yaml").write_text("this: is not read")
    specs = load_paths([folder])
    assert [(s.namespace, s.name, Path(s.source or "").name) for s in specs] == [
        ("default", "alpha", "a.yaml"),
        ("team", "iris", "a.yaml"),
        ("default", "bravo", "b.yml"),
    ]

    (folder / "c.yaml").write_text(yaml.safe_dump(changed(doc, "metadata.name", "bravo")))
    with pytest.raises(SpecError) as caught:
        load_paths([folder])
    assert caught.value.message == (
        f"metadata.name: default/bravo is defined twice (in {folder / 'b.yml'} and {folder / 'c.yaml'})"
    )
    with pytest.raises(SpecError, match="is defined twice"):
        load_paths([folder / "a.yaml", folder / "a.yaml"])


def test_load_paths_refuses_what_is_not_there(tmp_path: Path):
    with pytest.raises(SpecError, match="no such file or folder"):
        load_paths([tmp_path / "absent.yaml"])
    with pytest.raises(SpecError, match=r"no \*\.yaml or \*\.yml files"):
        load_paths([tmp_path])


def test_specs_are_frozen(tmp_path: Path, doc: dict[str, Any]):
    spec = parse(doc, tmp_path)
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.components["predictor"].autoscaling[A + "min-scale"] = "3"  # type: ignore[index]


def test_the_readme_yaml_of_kserve_with_a_transformer_parses(tmp_path: Path, model: Path):
    (tmp_path / "t.py").write_text("")
    text = KSERVE_IRIS.format(uri="models/add.onnx") + textwrap.indent(
        textwrap.dedent("""
        transformer:
          containers:
            - image: kserve/image-transformer:latest
              name: kserve-container
              args: ["--model-class", "t.py:T"]
    """),
        "  ",
    )
    [spec] = load_specs(text, base_dir=tmp_path)
    assert spec.entry == "transformer"
