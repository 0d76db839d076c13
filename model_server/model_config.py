"""Per-model configuration: ``<repository>/<model>/config.yaml``, every key optional.

    max_batch_size: 8            # rows per request (0: the model has no batch dimension limit)
    instances: 2                 # model calls that may run at once (size of the model's thread pool)
    execution_providers:         # tried in order; default CUDA when usable, else CPU
      - name: CUDAExecutionProvider
        options: {device_id: 0, cudnn_conv_algo_search: HEURISTIC}
      - CPUExecutionProvider
    intra_op_threads: 0          # onnxruntime threads per call (0: cores / instances)
    allow_spinning: false        # onnxruntime worker threads spin between calls (burns CPU for latency)
    io_binding: auto             # auto (on when a GPU provider is in use), true, false
    inline_max_us: 100           # calls measured to take less run on the event loop, skipping the thread hop
                                 # (0: every call goes to the thread pool)
    version_policy: all          # all | {latest: N} | {specific: [1, 3]}
    v1_output: label             # which output V1 :predict returns as "predictions" (default: the first)
    model_file: model.onnx
    model_class: pkg.module:Cls  # serve a Python class (a model_server.model.Model subclass) instead of ONNX;
                                 # it gets the version folder (or the model folder, without versions) as .path
    dynamic_batching:            # queue V2 requests and run them together (off without this key, or null)
      max_batch_rows: 32         # rows per batch (sum of the requests' first dimensions)
      max_queue_delay_us: 500    # the oldest request waits at most this long for a fuller batch (0: no wait)
      preferred_batch_rows: [8, 16]  # send at once when the queued rows make one of these sizes
    explainer:                   # the occlusion explainer (model_server.explainer): :explain answers
      output: probabilities      # the output whose values are attributed (default: the first float output)
      baseline: [0, 0, 0, 0]     # what a feature is replaced with (default: zeros)

An unknown key is an error naming it, never silently ignored. The server's flags (``--batch-*``,
``--explainer-*``, ``--model-class``) give the defaults of the keys a config.yaml leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = "config.yaml"


class ModelConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def as_ort(self) -> str | tuple[str, dict[str, Any]]:
        return (self.name, dict(self.options)) if self.options else self.name


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    max_batch_rows: int
    max_queue_delay_us: int = 0
    preferred_batch_rows: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_batch_rows < 1:
            raise ModelConfigError("dynamic_batching: max_batch_rows must be at least 1")
        if self.max_queue_delay_us < 0:
            raise ModelConfigError("dynamic_batching: max_queue_delay_us must not be negative")
        if any(size < 1 or size > self.max_batch_rows for size in self.preferred_batch_rows):
            raise ModelConfigError("dynamic_batching: preferred_batch_rows must lie between 1 and max_batch_rows")


@dataclass(frozen=True, slots=True)
class ExplainerConfig:
    output: str | None = None  # None: the first floating-point output
    baseline: tuple[float, ...] | None = None  # None: zeros


@dataclass(frozen=True, slots=True)
class ModelConfig:
    max_batch_size: int = 0
    instances: int = 1
    execution_providers: tuple[ProviderSpec, ...] | None = None
    intra_op_threads: int = 0
    allow_spinning: bool = False
    io_binding: str = "auto"
    inline_max_us: int = 100
    version_policy: Any = "all"
    v1_output: str | None = None
    model_file: str = "model.onnx"
    model_class: str | None = None
    dynamic_batching: BatchingConfig | None = None
    explainer: ExplainerConfig | None = None

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], where: str = "model config", base: ModelConfig | None = None
    ) -> ModelConfig:
        """Parse a config.yaml mapping; keys it leaves out keep their value in ``base`` (the server's defaults)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelConfigError(f"{where}: unsupported key(s) {', '.join(unknown)}; supported: {sorted(known)}")
        values = dict(raw)
        for key in ("max_batch_size", "instances", "intra_op_threads", "inline_max_us"):
            if key in values and (not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 0):
                raise ModelConfigError(f"{where}: {key} must be a non-negative integer, got {values[key]!r}")
        if values.get("instances", 1) < 1:
            raise ModelConfigError(f"{where}: instances must be at least 1")
        if "io_binding" in values:
            values["io_binding"] = _io_binding(values["io_binding"], where)
        if "allow_spinning" in values and not isinstance(values["allow_spinning"], bool):
            raise ModelConfigError(f"{where}: allow_spinning must be true or false")
        if "execution_providers" in values:
            values["execution_providers"] = _providers(values["execution_providers"], where)
        if "version_policy" in values:
            _check_version_policy(values["version_policy"], where)
        model_class = values.get("model_class")
        if model_class is not None and (not isinstance(model_class, str) or ":" not in model_class):
            raise ModelConfigError(f"{where}: model_class must be 'package.module:Class', got {model_class!r}")
        if "dynamic_batching" in values:
            values["dynamic_batching"] = _batching(values["dynamic_batching"], where)
        if "explainer" in values:
            values["explainer"] = _explainer(values["explainer"], where)
        return replace(base, **values) if base is not None else cls(**values)

    @classmethod
    def load(cls, model_dir: Path, base: ModelConfig | None = None) -> ModelConfig:
        path = model_dir / CONFIG_FILE
        if not path.exists():
            return base if base is not None else cls()
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ModelConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ModelConfigError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(raw, where=str(path), base=base)

    def select_versions(self, available: list[int]) -> list[int]:
        """The versions to serve out of those on disk, ascending."""
        available = sorted(available)
        policy = self.version_policy
        if policy == "all":
            return available
        if "latest" in policy:
            return available[-int(policy["latest"]) :]
        wanted = {int(v) for v in policy["specific"]}
        return [v for v in available if v in wanted]


def _io_binding(value: Any, where: str) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    if value in ("auto", "true", "false"):
        return value
    raise ModelConfigError(f"{where}: io_binding must be auto, true or false, got {value!r}")


def _providers(value: Any, where: str) -> tuple[ProviderSpec, ...]:
    if not isinstance(value, list) or not value:
        raise ModelConfigError(f"{where}: execution_providers must be a non-empty list")
    specs = []
    for item in value:
        if isinstance(item, str):
            specs.append(ProviderSpec(item))
        elif isinstance(item, dict) and isinstance(item.get("name"), str) and set(item) <= {"name", "options"}:
            options = item.get("options") or {}
            if not isinstance(options, dict):
                raise ModelConfigError(f"{where}: options of {item['name']} must be a mapping")
            specs.append(ProviderSpec(item["name"], tuple(sorted(options.items()))))
        else:
            raise ModelConfigError(f"{where}: each execution provider is a name or {{name, options}}, got {item!r}")
    return tuple(specs)


def _check_version_policy(value: Any, where: str) -> None:
    if value == "all":
        return
    if isinstance(value, dict) and len(value) == 1:
        if isinstance(value.get("latest"), int) and value["latest"] >= 1:
            return
        specific = value.get("specific")
        if isinstance(specific, list) and specific and all(isinstance(v, int) and v >= 1 for v in specific):
            return
    raise ModelConfigError(f"{where}: version_policy must be all, {{latest: N}} or {{specific: [versions]}}")


def _batching(value: Any, where: str) -> BatchingConfig | None:
    if value is None or value is False:
        return None
    keys = {"max_batch_rows", "max_queue_delay_us", "preferred_batch_rows"}
    if not isinstance(value, dict) or not set(value) <= keys or "max_batch_rows" not in value:
        raise ModelConfigError(f"{where}: dynamic_batching takes max_batch_rows and optionally {sorted(keys)}")
    for key in ("max_batch_rows", "max_queue_delay_us"):
        if key in value and (not isinstance(value[key], int) or isinstance(value[key], bool)):
            raise ModelConfigError(f"{where}: dynamic_batching.{key} must be an integer, got {value[key]!r}")
    preferred = value.get("preferred_batch_rows") or []
    if not isinstance(preferred, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in preferred):
        raise ModelConfigError(f"{where}: dynamic_batching.preferred_batch_rows must be a list of integers")
    try:
        return BatchingConfig(value["max_batch_rows"], value.get("max_queue_delay_us", 0), tuple(sorted(preferred)))
    except ModelConfigError as exc:
        raise ModelConfigError(f"{where}: {exc}") from None


def _explainer(value: Any, where: str) -> ExplainerConfig | None:
    if value is None or value is False:
        return None
    if value is True:
        return ExplainerConfig()
    if not isinstance(value, dict) or not set(value) <= {"output", "baseline"}:
        raise ModelConfigError(f"{where}: explainer takes output and baseline")
    output, baseline = value.get("output"), value.get("baseline")
    if output is not None and not isinstance(output, str):
        raise ModelConfigError(f"{where}: explainer.output must be an output name")
    numbers = isinstance(baseline, list) and all(type(v) in (int, float) for v in baseline)
    if baseline is not None and not numbers:
        raise ModelConfigError(f"{where}: explainer.baseline must be a list of numbers")
    return ExplainerConfig(output, None if baseline is None else tuple(float(v) for v in baseline))
