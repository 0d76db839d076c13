"""KServe ``serving.kserve.io/v1beta1`` ``InferenceService`` YAML, parsed into servelane's own frozen specs.

What a KServe user writes, and what servelane makes of it (every component becomes ``servelane model-server``
argv; the controller adds ``--host``, ``--http-port``, ``--grpc-port`` and ``--predictor-host``)::

    metadata.name / namespace           the service (name: a DNS-1035 label short enough for
                                        "<name>-transformer-00001"); the model is served under the name
    metadata.labels, annotations        kept; autoscaling.knative.dev/* checked as Knative does (both key
                                        spellings; controller.knative) and applied to every component;
                                        serving.kserve.io/deploymentMode: Serverless only;
                                        serving.kserve.io/enable-tag-routing: "true" only (tags always route)
    <component>.labels, annotations     the same checks, kept on that component (ComponentExtensionSpec); its
                                        autoscaling.knative.dev/* apply to it only and win over the service's
    predictor.model (modelFormat onnx)  storageUri .onnx file, or a folder holding model.onnx
      or predictor.onnx (the shorthand)     -> --model-name <name> --model-path FILE
                                        storageUri folder in Triton's layout (<version>/model.onnx [+ config.yaml])
                                            -> --model-name <name> --model-path DIR
    <component>.containers[0].args      model-server flags as given (a custom model class, a transformer);
                                        relative paths in --model-path/--model-class resolve against the YAML's
                                        folder; --model-name <name> added when absent
    explainer                           --explainer added (the occlusion explainer)
    transformer, explainer              --predictor-protocol <predictor's protocolVersion> unless given
    batcher {maxBatchSize, maxLatency}  --batch-max-rows N --batch-max-delay-us <maxLatency ms * 1000>
                                        (KServe's defaults 32 and 500 ms)
    minReplicas, maxReplicas, containerConcurrency, timeout, canaryTrafficPercent, scaleTarget, scaleMetric
                                        the ComponentSpec fields of those names (component fields win over
                                        both levels of autoscaling annotations, as in KServe)
    storageUri                          a local path (relative: to the YAML's folder) or file:///; nothing is
                                        downloaded, so gs://, s3://, pvc://, http(s)://, ... are errors

Anything else (another model format, ``runtime``, ``command``, ``logger``, pod fields, an unknown key) is a
:class:`SpecError` whose message starts with the field's path; nothing is silently ignored. A field that is kept
but has no effect on the local backend yet (``maxReplicas``, ``scaleTarget``, ``scaleMetric``, ``minReplicas: 0``,
the ``autoscaling.knative.dev/*`` annotations but min-scale, a container's ``image`` and ``name``, ``resources``,
``modelFormat.version``) is recorded for the autoscaler and the Kubernetes backend, and named in
:attr:`InferenceServiceSpec.warnings`, one line each, starting with the field's path as errors do.

Parsing reads the file system (storageUri and the files args name must exist) but loads no model and imports no
user code; the args are checked with the model server's own flag parser, so a bad flag fails here rather than when
a replica starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

from common.errors import InvalidInput
from controller import knative

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
COMPONENTS = ("predictor", "transformer", "explainer")
PROTOCOLS = ("v1", "v2", "grpc-v2")
MAX_NAME_LENGTH = 63 - len("-transformer-00001")  # revision names must stay DNS labels (63 characters)
MAX_TIMEOUT = 600.0  # Knative's max-revision-timeout-seconds
MAX_CONCURRENCY = 1000  # Knative's container-concurrency-max-limit
BATCHER_DEFAULTS = {"maxBatchSize": 32, "maxLatency": 500}  # KServe's batcher defaults (maxLatency in ms)
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
KSERVE_CONTAINER = "kserve-container"  # the name KServe gives its model container: naming it so changes nothing
CONTROLLER_FLAGS = ("--host", "--http-port", "--grpc-port", "--predictor-host")
MODEL_FLAGS = ("--model-name", "--model-path", "--model-repository", "--model-class")
FRAMEWORKS = ("sklearn", "xgboost", "lightgbm", "tensorflow", "pytorch", "triton", "pmml", "paddle", "huggingface")
ONNX_ONLY = (
    "servelane serves ONNX models only: convert the model to ONNX (skl2onnx for scikit-learn, onnxmltools for "
    "XGBoost and LightGBM, torch.onnx.export for PyTorch, tf2onnx for TensorFlow) and give modelFormat: {name: onnx}"
)
AUTOSCALER_FIELDS = ("maxReplicas", "scaleTarget", "scaleMetric")  # recorded for the autoscaler, warned about
# KServe's ComponentExtensionSpec fields servelane supports, on every component
EXTENSION_FIELDS = (
    *("minReplicas", "maxReplicas", "containerConcurrency", "timeout", "canaryTrafficPercent", "scaleTarget"),
    *("scaleMetric", "batcher", "annotations", "labels"),
)
HINTS = {  # fields KServe has and servelane refuses, with the reason
    "runtime": "not supported (servelane runs its own model server)",
    "runtimeVersion": "not supported (servelane runs its own model server)",
    "command": "not supported (servelane always runs its own model server: put model-server flags in args)",
    "storage": "not supported: give storageUri, a local path or file:// URI",
    "annotations": "not supported here: give annotations in metadata.annotations or spec.<component>.annotations",
    "labels": "not supported here: give labels in metadata.labels or spec.<component>.labels",
    "scaleMetricType": "not supported (no HPA or KEDA here: scaleMetric concurrency or rps scales on Knative's KPA)",
    "autoScaling": "not supported (no HPA or KEDA here: use scaleTarget and scaleMetric concurrency or rps)",
    "alibi": "not supported: servelane's explainer is occlusion, a containers explainer (args may be empty)",
    "art": "not supported: servelane's explainer is occlusion, a containers explainer (args may be empty)",
    **{name: f"not served: {ONNX_ONLY}" for name in FRAMEWORKS},
}
# What a recorded field without a local effect says (the warnings); each follows the field's path and ": ".
UNTIL_AUTOSCALER = "recorded; the local backend runs max(minReplicas, 1) replicas until the autoscaler lands"
UNTIL_SCALE_TO_ZERO = "0 recorded; the local backend runs 1 replica until scale to zero lands"
RECORDED_IMAGE = "recorded for a Kubernetes backend; the local backend runs servelane's own model server"
RECORDED_NAME = "recorded; the local backend names each replica after its revision (<revision>-<n>)"
RECORDED_RESOURCES = "recorded for a Kubernetes backend; the local backend enforces no requests or limits"
RECORDED_GPU = "; a GPU limit reserves no GPU: the model server uses CUDA when onnxruntime can, else the CPU"
RECORDED_VERSION = "recorded, not checked: the model server loads the ONNX model storageUri names"


class SpecError(InvalidInput):
    """An InferenceService servelane cannot run as written; the message starts with the field's path."""


@dataclass(frozen=True, slots=True)
class ComponentSpec:
    component: str  # predictor | transformer | explainer
    server_args: tuple[str, ...]  # model-server argv; the controller adds --host, --*-port, --predictor-host
    env: tuple[tuple[str, str], ...] = ()
    min_replicas: int = 1  # KServe's default; 0 allowed (scale to zero comes later)
    max_replicas: int = 0  # 0: no bound
    container_concurrency: int = 0  # 0: unlimited
    timeout: float = 300.0  # seconds; Knative's default
    canary_traffic_percent: int | None = None
    scale_target: int | None = None
    scale_metric: str = "concurrency"  # concurrency | rps
    autoscaling: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # autoscaling.knative.dev/*
    predictor_protocol: str = "v1"  # how the predictor is called: its protocolVersion, or a --predictor-protocol flag
    image: str | None = None  # kept for the Kubernetes backend
    resources: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # kept, not enforced locally
    # the component's own annotations and labels as written (the service's stay on InferenceServiceSpec); part of
    # the digest, as they are part of a Knative revision's template
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def digest(self) -> str:
        """A stable short hash of what defines a revision: every field but the canary percent, which moves traffic
        between revisions without making one (as in KServe)."""
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "canary_traffic_percent"}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=dict)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class InferenceServiceSpec:
    name: str
    namespace: str
    components: Mapping[str, ComponentSpec]  # always has "predictor"; ordered predictor, transformer, explainer
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    source: str | None = None  # the file it came from, for messages
    warnings: tuple[str, ...] = ()  # fields recorded without a local effect, one line each ("<path>: <what>")

    @property
    def entry(self) -> str:
        """The component the service's own host reaches."""
        return "transformer" if "transformer" in self.components else "predictor"

    @property
    def model_name(self) -> str:
        """The model name clients use (``/v1/models/<name>``): the service's name, as in KServe."""
        return self.name


def load_paths(paths: Iterable[Path]) -> list[InferenceServiceSpec]:
    """The services in each FILE, or in every ``*.yaml``/``*.yml`` directly in a DIR (sorted, not recursive)."""
    specs: list[InferenceServiceSpec] = []
    for path in paths:
        for file in yaml_files(Path(path)):
            try:
                text = file.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise SpecError(f"{file}: cannot read: {exc}") from None
            specs.extend(load_specs(text, base_dir=file.parent, source=str(file)))
    check_unique(specs)
    return specs


def load_specs(text: str, *, base_dir: Path, source: str | None = None) -> list[InferenceServiceSpec]:
    """The services in ``text``, one per YAML document (empty documents skipped)."""
    try:
        docs = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as exc:
        raise SpecError(f"{source or 'input'}: not valid YAML: {exc}") from None
    specs = []
    for number, doc in enumerate(docs, 1):
        if doc is None:
            continue
        try:
            specs.append(_service(doc, base_dir, source))
        except SpecError as exc:
            where = ", ".join(filter(None, [source, f"document {number}" if len(docs) > 1 else None]))
            raise SpecError(f"{exc.message} (in {where})" if where else exc.message) from None
    check_unique(specs)
    return specs


def yaml_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise SpecError(f"{path}: no *.yaml or *.yml files in this folder")
        return files
    if not path.is_file():
        raise SpecError(f"{path}: no such file or folder")
    return [path]


def check_unique(specs: list[InferenceServiceSpec]) -> None:
    """Refuses a service (namespace and name) defined twice: ``up`` and ``apply`` would silently run the last."""
    seen: dict[tuple[str, str], InferenceServiceSpec] = {}
    for spec in specs:
        first = seen.setdefault((spec.namespace, spec.name), spec)
        if first is not spec:
            where = " and ".join(dict.fromkeys(s.source or "input" for s in (first, spec)))
            raise SpecError(f"metadata.name: {spec.namespace}/{spec.name} is defined twice (in {where})")


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# --- the document and its metadata -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    name: str
    base_dir: Path
    autoscaling: Mapping[str, str]  # the autoscaling.knative.dev/* annotations in effect, by Knative's key
    warnings: list[str]  # filled as the fields are read
    origins: Mapping[str, str]  # Knative's key -> the annotation's field path as the user wrote it, for messages

    def annotation_at(self, key: str) -> str:
        """The field path of the autoscaling annotation ``key`` (Knative's spelling), as the user wrote it."""
        return self.origins.get(key, f'metadata.annotations["{key}"]')

    def with_annotations(self, autoscaling: Mapping[str, str], origins: Mapping[str, str]) -> _Context:
        """The context of one component, whose own autoscaling annotations win over the service's."""
        return replace(
            self,
            autoscaling=MappingProxyType({**self.autoscaling, **autoscaling}),
            origins=MappingProxyType({**self.origins, **origins}),
        )


def _service(doc: Any, base_dir: Path, source: str | None) -> InferenceServiceSpec:
    doc = _mapping(doc, "document")
    if doc.get("apiVersion") != API_VERSION:
        raise SpecError(f"apiVersion: expected {API_VERSION}, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != KIND:
        raise SpecError(f"kind: expected {KIND}, got {doc.get('kind')!r}")
    _only(doc, "", ("apiVersion", "kind", "metadata", "spec"))
    metadata = _mapping(_required(doc, "metadata", ""), "metadata")
    _only(metadata, "metadata", ("name", "namespace", "labels", "annotations"))
    name = _name(metadata.get("name"))
    namespace = _namespace(metadata.get("namespace", "default"))
    labels = _labels(metadata.get("labels"), "metadata.labels")
    annotations = _strings(metadata.get("annotations"), "metadata.annotations")
    warnings: list[str] = []
    autoscaling, origins = _annotations(annotations, "metadata.annotations", warnings)
    context = _Context(name, Path(base_dir), MappingProxyType(autoscaling), warnings, MappingProxyType(origins))
    spec = _mapping(_required(doc, "spec", ""), "spec")
    _only(spec, "spec", COMPONENTS)
    if spec.get("predictor") is None:
        raise SpecError("spec.predictor: required (every InferenceService has one; a transformer calls it)")
    predictor = _component("predictor", spec["predictor"], context, "v1")
    components = {"predictor": predictor}
    for component in ("transformer", "explainer"):
        if component in spec:
            components[component] = _component(component, spec[component], context, predictor.predictor_protocol)
    return InferenceServiceSpec(
        name, namespace, MappingProxyType(components), _frozen(annotations), _frozen(labels), source, tuple(warnings)
    )


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError("metadata.name: required")
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", value):
        raise SpecError(
            f"metadata.name: {value!r} is not a DNS-1035 label (lowercase letters, digits and '-', starting with "
            "a letter and ending with a letter or digit)"
        )
    if len(value) > MAX_NAME_LENGTH:
        raise SpecError(
            f"metadata.name: {value!r} is longer than {MAX_NAME_LENGTH} characters (revision names such as "
            f"'<name>-transformer-00001' must fit in 63)"
        )
    return value


def _namespace(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value) or len(value) > 63:
        raise SpecError(f"metadata.namespace: {value!r} is not a DNS-1123 label")
    return value


def _reserved(key: str) -> bool:
    domain = key.rpartition("/")[0]
    return any(domain == d or domain.endswith("." + d) for d in ("kserve.io", "knative.dev", "kubeflow.org"))


def _labels(value: Any, where: str) -> dict[str, str]:
    labels = _strings(value, where)
    for key in labels:
        if _reserved(key):
            raise SpecError(f'{where}["{key}"]: not supported (servelane sets no KServe or Knative labels)')
    return labels


def _annotations(annotations: Mapping[str, str], at: str, warnings: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The ``autoscaling.knative.dev/*`` annotations of the mapping at ``at`` by Knative's key, each checked (all
    but a min-scale above 0 warned about: recorded for the autoscaler), and each one's field path as written;
    refuses other reserved keys."""
    autoscaling: dict[str, str] = {}
    origins: dict[str, str] = {}
    for key, value in annotations.items():
        where = f'{at}["{key}"]'
        if key == DEPLOYMENT_MODE:
            if value != "Serverless":
                raise SpecError(f"{where}: only Serverless is supported, got {value!r}")
        elif key == TAG_ROUTING:
            if value != "true":
                raise SpecError(f'{where}: only "true" is supported (servelane always routes tags: latest-, prev-)')
        elif key.startswith(knative.PREFIX):
            try:
                canonical = knative.canonical_key(key)
                knative.check(canonical, value)
            except ValueError as exc:
                raise SpecError(f"{where}: {exc}") from None
            if canonical in autoscaling:
                raise SpecError(f"{where}: {canonical} is given twice (under both of its spellings)")
            autoscaling[canonical], origins[canonical] = value, where
            if canonical != knative.PREFIX + "min-scale":
                warnings.append(f"{where}: {UNTIL_AUTOSCALER}")
            elif int(value) == 0:
                warnings.append(f"{where}: {UNTIL_SCALE_TO_ZERO}")
        elif _reserved(key):
            raise SpecError(f"{where}: not supported (servelane reads no other KServe or Knative annotations)")
    lowest, highest = autoscaling.get(knative.PREFIX + "min-scale"), autoscaling.get(knative.PREFIX + "max-scale")
    if lowest is not None and highest is not None and 0 < int(highest) < int(lowest):
        raise SpecError(f"{origins[knative.PREFIX + 'max-scale']}: {highest} is below min-scale {lowest}")
    return autoscaling, origins


# --- components --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Process:
    """What a component's model server is made of, before the component fields are applied."""

    args: list[str]
    args_at: str  # the field path of the args, for messages
    env: tuple[tuple[str, str], ...]
    resources: Mapping[str, Any]
    image: str | None = None
    protocol: str = "v1"  # the predictor's protocolVersion


def _component(component: str, doc: Any, context: _Context, protocol: str) -> ComponentSpec:
    where = f"spec.{component}"
    doc = _mapping(doc, where)
    sources = ("model", "onnx", "containers") if component == "predictor" else ("containers",)
    _only(doc, where, (*sources, *EXTENSION_FIELDS))
    context, kept = _own_metadata(doc, where, context)
    given = [key for key in sources if key in doc]
    if len(given) != 1:
        raise SpecError(
            f"{where}: give exactly one of {', '.join(sources)}"
            if len(sources) > 1
            else f"{where}.containers: required"
        )
    if given[0] == "containers":
        process = _container(doc["containers"], f"{where}.containers", component, context)
    else:
        process = _model(doc[given[0]], f"{where}.{given[0]}", given[0], context)
    args = process.args
    if component != "predictor":
        args, protocol = _predictor_protocol(args, protocol, process.args_at)
    else:
        protocol = process.protocol
    if "batcher" in doc:
        args = _batcher(args, doc["batcher"], f"{where}.batcher")
    _check_server_args(args, component, context.name, process.args_at)
    return ComponentSpec(
        component,
        tuple(args),
        process.env,
        image=process.image,
        resources=process.resources,
        predictor_protocol=protocol,
        **kept,
        **_scaling(doc, where, context),
    )


def _own_metadata(doc: Mapping[str, Any], where: str, context: _Context) -> tuple[_Context, dict[str, Any]]:
    """A component's own ``annotations`` and ``labels`` (KServe's ComponentExtensionSpec), checked as the service's
    are; its autoscaling annotations win over the service's for this component only, as in KServe."""
    annotations = _strings(doc.get("annotations"), f"{where}.annotations")
    autoscaling, origins = _annotations(annotations, f"{where}.annotations", context.warnings)
    labels = _labels(doc.get("labels"), f"{where}.labels")
    kept = {"annotations": _frozen(annotations), "labels": _frozen(labels)}
    return context.with_annotations(autoscaling, origins), kept


def _model(doc: Any, where: str, key: str, context: _Context) -> _Process:
    """The ONNX model of ``predictor.model``, or of the older ``predictor.onnx`` shorthand."""
    doc = _mapping(doc, where)
    common = ("storageUri", "protocolVersion", "args", "env", "resources")
    _only(doc, where, ("modelFormat", *common) if key == "model" else common)
    if key == "model":
        _model_format(_required(doc, "modelFormat", where), f"{where}.modelFormat", context.warnings)
    path = _storage_path(_required(doc, "storageUri", where), f"{where}.storageUri", context.base_dir)
    protocol = doc.get("protocolVersion", "v1")
    if protocol not in PROTOCOLS:
        raise SpecError(f"{where}.protocolVersion: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    extra = _args(doc.get("args"), f"{where}.args")
    for flag in _flags(extra):
        if _abbreviates(flag, MODEL_FLAGS):
            raise SpecError(
                f"{where}.args: {flag} is not allowed here (storageUri names the model; for a custom "
                "model class use containers)"
            )
    args = ["--model-name", context.name, "--model-path", str(_model_file(path, f"{where}.storageUri")), *extra]
    env = _env(doc.get("env"), f"{where}.env")
    resources = _resources(doc.get("resources"), f"{where}.resources", context.warnings)
    return _Process(args, f"{where}.args", env, resources, protocol=protocol)


def _model_format(doc: Any, where: str, warnings: list[str]) -> None:
    doc = _mapping(doc, where)
    _only(doc, where, ("name", "version"))
    name = _required(doc, "name", where)
    if not isinstance(name, str) or name.lower() != "onnx":
        raise SpecError(f"{where}.name: {name!r} is not served: {ONNX_ONLY}")
    if "version" in doc:
        if not isinstance(doc["version"], str | int | float):
            raise SpecError(f"{where}.version: expected a version string")
        warnings.append(f"{where}.version: {RECORDED_VERSION}")


def _storage_path(uri: Any, where: str, base_dir: Path) -> Path:
    if not isinstance(uri, str) or not uri:
        raise SpecError(f"{where}: expected a local path or file:// URI")
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    if scheme is None:
        path = Path(uri)
    elif scheme.group(1).lower() == "file":
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise SpecError(f"{where}: {uri!r} names a host; file:// URIs must be file:///absolute/path")
        path = Path(unquote(parsed.path))
    else:
        raise SpecError(
            f"{where}: {scheme.group(1)}:// is not supported: servelane downloads nothing; give a local "
            "path (relative to the YAML file's folder) or a file:///absolute/path URI"
        )
    path = (base_dir / path).resolve()
    if not path.exists():
        raise SpecError(f"{where}: {path} does not exist")
    return path


def _model_file(path: Path, where: str) -> Path:
    """What ``--model-path`` gets: an .onnx file, or a model folder in Triton's layout."""
    expected = "an .onnx file, a folder holding model.onnx, or a model folder in Triton's layout (<version>/model.onnx"
    expected += " [+ config.yaml]; a repository of several models is not one)"
    if path.is_file():
        if path.suffix != ".onnx":
            raise SpecError(f"{where}: {path} is not an .onnx file; expected {expected}")
        return path
    if any(p.is_dir() and p.name.isdigit() and p.name[0] != "0" for p in path.iterdir()):
        return path
    if (path / "model.onnx").is_file():
        if (path / "config.yaml").exists():
            raise SpecError(
                f"{where}: {path} has config.yaml beside model.onnx, which only applies in Triton's "
                "layout: move model.onnx into a version folder (1/model.onnx)"
            )
        return path / "model.onnx"
    raise SpecError(f"{where}: {path} holds neither model.onnx nor version folders; expected {expected}")


def _container(doc: Any, where: str, component: str, context: _Context) -> _Process:
    """``containers: [one container]``: model-server flags in ``args``."""
    if not isinstance(doc, list) or len(doc) != 1:
        raise SpecError(f"{where}: expected exactly one container (servelane runs one model server per replica)")
    where += "[0]"
    container = _mapping(doc[0], where)
    _only(container, where, ("name", "image", "args", "env", "resources"))
    for key, recorded in (("name", RECORDED_NAME), ("image", RECORDED_IMAGE)):
        if key in container and not isinstance(container[key], str):
            raise SpecError(f"{where}.{key}: expected a string")
        if key in container and (key, container[key]) != ("name", KSERVE_CONTAINER):
            context.warnings.append(f"{where}.{key}: {recorded}")
    args = _resolve_paths(_args(container.get("args"), f"{where}.args"), f"{where}.args", context.base_dir)
    flags = _flags(args)
    if component == "explainer" and "--explainer" not in flags:
        args.append("--explainer")
    if "--model-name" not in flags:
        args += ["--model-name", context.name]
    env = _env(container.get("env"), f"{where}.env")
    resources = _resources(container.get("resources"), f"{where}.resources", context.warnings)
    return _Process(args, f"{where}.args", env, resources, image=container.get("image"))


def _resolve_paths(args: list[str], where: str, base_dir: Path) -> list[str]:
    """Relative paths of ``--model-path`` and of ``--model-class file.py:Class``, resolved against the YAML's folder
    (the model server may run anywhere)."""
    resolved = list(args)
    for index, flag, value in _flag_values(args, ("--model-path", "--model-class")):
        if flag == "--model-class":
            module, colon, cls = value.rpartition(":")
            if not module.endswith(".py"):
                continue
            path = (base_dir / module).resolve()
            new = f"{path}{colon}{cls}"
        else:
            path = (base_dir / value).resolve()
            new = str(path)
        if not path.exists():
            raise SpecError(f"{where}: {flag} {value}: {path} does not exist (relative to the YAML file's folder)")
        resolved[index] = new if resolved[index] == value else f"{flag}={new}"
    return resolved


def _predictor_protocol(args: list[str], protocol: str, where: str) -> tuple[list[str], str]:
    """A transformer's or explainer's way to the predictor: its own --predictor-protocol, else the predictor's."""
    given = [value for _, _, value in _flag_values(args, ("--predictor-protocol",))]
    if not given:
        return [*args, "--predictor-protocol", protocol], protocol
    if given[-1] not in PROTOCOLS:
        raise SpecError(f"{where}: --predictor-protocol must be one of {', '.join(PROTOCOLS)}, got {given[-1]!r}")
    return args, given[-1]


def _batcher(args: list[str], doc: Any, where: str) -> list[str]:
    doc = _mapping(doc if doc is not None else {}, where)
    _only(doc, where, tuple(BATCHER_DEFAULTS))
    if {"--batch-max-rows", "--batch-max-delay-us"} & set(_flags(args)):
        raise SpecError(f"{where}: give batching either here or as --batch-* args, not both")
    rows = _int(doc.get("maxBatchSize", BATCHER_DEFAULTS["maxBatchSize"]), f"{where}.maxBatchSize", 1)
    latency_ms = _int(doc.get("maxLatency", BATCHER_DEFAULTS["maxLatency"]), f"{where}.maxLatency", 0)
    return [*args, "--batch-max-rows", str(rows), "--batch-max-delay-us", str(latency_ms * 1000)]


def _check_server_args(args: list[str], component: str, name: str, where: str) -> None:
    """The argv as the model server itself reads it (its own parser), so a bad flag fails here, not at start."""
    from model_server.__main__ import parse_args  # argparse and dataclasses only; no model is loaded

    for flag in _flags(args):
        if _abbreviates(flag, CONTROLLER_FLAGS):
            raise SpecError(f"{where}: {flag} is set by the controller")
        if "_" in flag:
            raise SpecError(f"{where}: {flag}: servelane model-server flags use dashes ({flag.replace('_', '-')})")
    if component == "transformer" and not any(_abbreviates(flag, ("--model-class",)) for flag in _flags(args)):
        raise SpecError(f"{where}: a transformer is a Python class: give --model-class package.module:Class")
    placeholder = ["--predictor-host", "127.0.0.1:1"] if component != "predictor" else []
    output = io.StringIO()  # argparse reports on stderr (--help on stdout) and exits; logging keeps its own stream
    try:
        with contextlib.redirect_stderr(output), contextlib.redirect_stdout(output):
            config = parse_args([*args, *placeholder])
    except SystemExit:
        lines = output.getvalue().strip().splitlines() or ["not valid"]
        problem = lines[-1].partition("error: ")[2] if "error: " in lines[-1] else "not valid model-server flags"
        raise SpecError(f"{where}: {problem}") from None
    if config.model_repository is not None:
        raise SpecError(
            f"{where}: --model-repository is not supported (one model per InferenceService, served "
            "under its name: give one model's folder as --model-path)"
        )
    if config.model_name != name:
        raise SpecError(
            f"{where}: --model-name {config.model_name} differs from metadata.name {name}: the model is "
            "served under the InferenceService's name, as in KServe"
        )


def _abbreviates(flag: str, names: tuple[str, ...]) -> bool:
    """Whether ``flag`` is one of ``names`` or a prefix argparse would take for one."""
    return len(flag) > 2 and any(name.startswith(flag) for name in names)


def _scaling(doc: Mapping[str, Any], where: str, context: _Context) -> dict[str, Any]:
    """The component's scaling and traffic fields; the service's annotations fill what the component leaves out."""
    autoscaling = dict(context.autoscaling)

    def annotation(key: str) -> str | None:
        return autoscaling.get(knative.PREFIX + key)

    min_replicas = _int(doc.get("minReplicas", int(annotation("min-scale") or 1)), f"{where}.minReplicas", 0)
    if doc.get("minReplicas") == 0:
        context.warnings.append(f"{where}.minReplicas: {UNTIL_SCALE_TO_ZERO}")
    context.warnings.extend(f"{where}.{key}: {UNTIL_AUTOSCALER}" for key in AUTOSCALER_FIELDS if key in doc)
    max_replicas = _int(doc.get("maxReplicas", int(annotation("max-scale") or 0)), f"{where}.maxReplicas", 0)
    if max_replicas and max_replicas < min_replicas:  # named where each came from: a field or an annotation
        high_at, low_at = (
            f"{where}.{name}" if name in doc else context.annotation_at(knative.PREFIX + key)
            for name, key in (("maxReplicas", "max-scale"), ("minReplicas", "min-scale"))
        )
        raise SpecError(f"{high_at}: {max_replicas} is below {low_at} {min_replicas}")
    target, target_annotation = doc.get("scaleTarget"), annotation("target")
    if target is None and target_annotation is not None and float(target_annotation).is_integer():
        target = int(float(target_annotation))  # a fractional Knative target stays in `autoscaling` only
    scale_target = None if target is None else _int(target, f"{where}.scaleTarget", 1)
    metric = doc.get("scaleMetric", annotation("metric") or "concurrency")
    try:
        knative.choice(metric, knative.METRICS, knative.REFUSED_METRICS)
    except ValueError as exc:
        raise SpecError(f"{where}.scaleMetric: {exc}") from None
    autoscaling[knative.PREFIX + "min-scale"] = str(min_replicas)
    autoscaling.pop(knative.PREFIX + "max-scale", None)
    if max_replicas:
        autoscaling[knative.PREFIX + "max-scale"] = str(max_replicas)
    if "scaleTarget" in doc:
        autoscaling[knative.PREFIX + "target"] = str(scale_target)
    autoscaling[knative.PREFIX + "metric"] = metric
    canary = doc.get("canaryTrafficPercent")
    return {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "container_concurrency": _int(
            doc.get("containerConcurrency", 0), f"{where}.containerConcurrency", 0, MAX_CONCURRENCY
        ),
        "timeout": _timeout(doc.get("timeout", 300), f"{where}.timeout"),
        "canary_traffic_percent": None if canary is None else _int(canary, f"{where}.canaryTrafficPercent", 0, 100),
        "scale_target": scale_target,
        "scale_metric": metric,
        "autoscaling": _frozen(autoscaling),
    }


def _timeout(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_TIMEOUT:
        raise SpecError(f"{where}: expected seconds, more than 0 and at most {MAX_TIMEOUT:g}, got {value!r}")
    return float(value)


# --- container parts ---------------------------------------------------------------------------------------------


def _args(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(arg, str) for arg in value):
        raise SpecError(f"{where}: expected a list of strings (quote numbers)")
    return list(value)


def _flags(args: list[str]) -> list[str]:
    return [arg.partition("=")[0] for arg in args if arg.startswith("--")]


def _flag_values(args: list[str], names: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(index of the value, flag, value) for each ``--flag value`` and ``--flag=value`` among ``names``."""
    found = []
    for index, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        if flag not in names:
            continue
        if equals:
            found.append((index, flag, value))
        elif index + 1 < len(args):
            found.append((index + 1, flag, args[index + 1]))
    return found


def _env(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(f"{where}: expected a list of {{name, value}}")
    env: dict[str, str] = {}
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        item = _mapping(item, at)
        if "valueFrom" in item:
            raise SpecError(f"{at}.valueFrom: not supported (no Kubernetes secrets or config maps here: give value)")
        _only(item, at, ("name", "value"))
        name, text = item.get("name"), item.get("value", "")
        if not isinstance(name, str) or not name or "=" in name:
            raise SpecError(f"{at}.name: expected a variable name")
        if not isinstance(text, str):
            raise SpecError(f"{at}.value: expected a string (quote numbers and booleans)")
        if name in env:
            raise SpecError(f"{at}.name: {name} is given twice")
        env[name] = text
    return tuple(env.items())


def _resources(value: Any, where: str, warnings: list[str]) -> Mapping[str, Any]:
    """``{requests, limits}`` kept as given for the Kubernetes backend (nothing is enforced locally: a warning)."""
    if value is None:
        return MappingProxyType({})
    doc = _mapping(value, where)
    _only(doc, where, ("requests", "limits"))
    kept = {}
    for key, amounts in doc.items():
        amounts = _mapping(amounts, f"{where}.{key}")
        for resource, amount in amounts.items():
            if isinstance(amount, bool) or not isinstance(amount, str | int | float):
                raise SpecError(f"{where}.{key}.{resource}: expected a quantity such as 500m, 1Gi or 1")
        kept[key] = _frozen(amounts)
    gpu = any(resource.endswith("/gpu") for amounts in kept.values() for resource in amounts)
    warnings.append(f"{where}: {RECORDED_RESOURCES}{RECORDED_GPU if gpu else ''}")
    return _frozen(kept)


# --- small checks ------------------------------------------------------------------------------------------------


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _required(doc: Mapping[str, Any], key: str, where: str) -> Any:
    if doc.get(key) is None:
        raise SpecError(f"{where}.{key}: required" if where else f"{key}: required")
    return doc[key]


def _only(doc: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    for key in doc:
        if key not in allowed:
            at = f"{where}.{key}" if where else str(key)
            hint = HINTS.get(str(key), f"not supported (supported here: {', '.join(allowed)})")
            raise SpecError(f"{at}: {hint}")


def _int(value: Any, where: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"of at least {low}" if high is None else f"from {low} to {high}"
        raise SpecError(f"{where}: expected an integer {bound}, got {value!r}")
    return value


def _strings(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    doc = _mapping(value, where)
    for key, text in doc.items():
        if not isinstance(key, str) or not isinstance(text, str):
            raise SpecError(f'{where}["{key}"]: keys and values must be strings (quote numbers and booleans)')
    return doc


def _frozen(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(sorted(doc.items())))
