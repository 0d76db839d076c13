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

An unknown key is an error naming it, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
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

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "model config") -> ModelConfig:
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
        return cls(**values)

    @classmethod
    def load(cls, model_dir: Path) -> ModelConfig:
        path = model_dir / CONFIG_FILE
        if not path.exists():
            return cls()
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ModelConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ModelConfigError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(raw, where=str(path))

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
