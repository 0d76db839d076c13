"""The onnxruntime model: session creation with the configured execution providers, and inference off the loop.

onnxruntime falls back to the CPU silently when a GPU provider cannot start, so after creating the session we
compare ``session.get_providers()`` with what was asked, log the difference, and report the providers in use in
the model's metadata (and, through the dataplane, as a metric).
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from common.errors import InferenceError, InvalidInput, Unsupported
from model_server import codec_v1, explainer
from model_server.datatypes import from_onnx, numpy_dtype
from model_server.model import CallCost, Model, RequestContext
from model_server.model_config import ModelConfig, ProviderSpec
from model_server.types import InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_BF16 = 16  # ONNX TensorProto.BFLOAT16
_INPUT_ERRORS = (ort_state.InvalidArgument,)
_RUN_ERRORS = (ort_state.Fail, ort_state.RuntimeException, ort_state.NotImplemented, ort_state.EPFail)


def default_providers() -> tuple[ProviderSpec, ...]:
    """CUDA then CPU where a CUDA driver is present, else CPU alone (so no failed-GPU noise on CPU hosts)."""
    if CUDA in ort.get_available_providers() and _cuda_driver_present():
        return (ProviderSpec(CUDA), ProviderSpec(CPU))
    return (ProviderSpec(CPU),)


def _cuda_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


class OnnxModel(Model):
    platform = "onnxruntime_onnx"
    batch_key_headers = ()  # onnxruntime never sees a request's headers: any requests may share a batch

    def __init__(self, name: str, version: str, path: Path, config: ModelConfig) -> None:
        super().__init__(name, version, instances=config.instances)
        self.path = path
        self.config = config
        self.max_batch_size = config.max_batch_size
        self.requested_providers: list[str] = []
        self.providers: list[str] = []
        self._session: ort.InferenceSession | None = None
        self._inputs: tuple[TensorSpec, ...] = ()
        self._outputs: tuple[TensorSpec, ...] = ()
        self._io_binding = False
        self._cost = CallCost(config.inline_max_us / 1e6)
        self._metadata = ModelMetadata(name, (version,), self.platform, (), ())

    @classmethod
    def create(cls, name: str, version: str, path: Path | None, config: ModelConfig) -> OnnxModel:
        if path is None:
            raise ValueError(f"model {name}: an onnxruntime model needs a model file")
        return cls(name, version, path, config)

    def load(self) -> None:
        requested = self.config.execution_providers or default_providers()
        self.requested_providers = [spec.name for spec in requested]
        session = ort.InferenceSession(
            str(self.path), sess_options=self.session_options(), providers=[spec.as_ort() for spec in requested]
        )
        self.providers = session.get_providers()
        missing = [name for name in self.requested_providers if name not in self.providers]
        if missing:
            log.warning(
                "model %s v%s: asked for %s but onnxruntime could not start %s; running on %s",
                self.name, self.version, self.requested_providers, missing, self.providers,
            )
        log.info("model %s v%s: execution providers in use: %s", self.name, self.version, self.providers)
        self._inputs = tuple(_spec(arg) for arg in session.get_inputs())
        self._outputs = tuple(_spec(arg) for arg in session.get_outputs())
        if self.config.v1_output and self.config.v1_output not in {o.name for o in self._outputs}:
            raise ValueError(f"v1_output {self.config.v1_output!r} is not an output of {self.path}")
        self._io_binding = self._use_io_binding()
        self._metadata = ModelMetadata(
            name=self.name,
            versions=(self.version,),
            platform=self.platform,
            inputs=self._inputs,
            outputs=self._outputs,
            parameters={
                "execution_providers": self.providers,
                "requested_execution_providers": self.requested_providers,
            },
        )
        self._session = session
        self.ready = True

    def _use_io_binding(self) -> bool:
        """io_binding where a GPU provider runs the model, unless a tensor is a string: onnxruntime binds none."""
        wanted = self.config.io_binding == "true" or (self.config.io_binding == "auto" and self.providers[0] != CPU)
        strings = [t.name for t in (*self._inputs, *self._outputs) if t.datatype == "BYTES"]
        if wanted and strings:
            log.info("model %s v%s: io_binding off: strings %s cannot be bound", self.name, self.version, strings)
        return wanted and not strings

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        cores = os.cpu_count() or 1
        options.intra_op_num_threads = self.config.intra_op_threads or max(1, cores // self.config.instances)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.config.allow_spinning else "0")
        options.log_severity_level = 3
        return options

    def metadata(self) -> ModelMetadata:
        return self._metadata

    def check_request(self, request: InferRequest) -> None:
        """BYTES inputs become str here, per request, so one that is not UTF-8 fails alone, not in its batch."""
        for tensor in request.inputs:
            if tensor.datatype == "BYTES":
                tensor.data = _strings(tensor)

    async def predict(self, payload: Any, context: RequestContext) -> Any:
        if isinstance(payload, InferRequest):
            return await self._infer(payload)
        output = self.config.v1_output or self._outputs[0].name
        feeds = codec_v1.to_feeds(payload, self._inputs)
        (array,) = await self._call(feeds, [output])
        return {"predictions": codec_v1.predictions(array)}

    def has_explainer(self) -> bool:
        return self.config.explainer is not None

    async def explain(self, payload: Any, context: RequestContext) -> Any:
        """Occlusion attributions (``explainer:`` in config.yaml), computed in-process in one onnxruntime call."""
        config = self.config.explainer
        if config is None:
            raise Unsupported(f"Model {self.name} has no explainer")
        spec = explainer.single_input(self._metadata)
        output = explainer.explained_output(self._outputs, config.output, self.name).name

        async def predict(rows: np.ndarray) -> np.ndarray:
            (array,) = await self._call({spec.name: rows.astype(numpy_dtype(spec.datatype))}, [output])
            return array

        return await explainer.explain(payload, config, output, predict)

    async def _infer(self, request: InferRequest) -> InferResponse:
        feeds = {tensor.name: _feed(tensor) for tensor in request.inputs}
        specs = {spec.name: spec for spec in self._outputs}
        names = [out.name for out in request.outputs] if request.outputs else list(specs)
        arrays = await self._call(feeds, names)
        outputs = [
            Tensor(name, specs[name].datatype, tuple(array.shape), array) for name, array in zip(names, arrays)
        ]
        return InferResponse(
            model_name=self.name, model_version=self.version, id=request.id or "", outputs=outputs
        )

    async def _call(self, feeds: dict[str, Any], names: list[str]) -> list[np.ndarray]:
        """One onnxruntime call: inline when the model is measured to be that fast (see CallCost), else pooled."""
        first = next(iter(feeds.values()))
        rows = first.shape()[0] if isinstance(first, ort.OrtValue) else (first.shape[0] if first.ndim else 1)
        if self._cost.inline(rows):
            started = time.perf_counter()
            arrays = self._run(feeds, names)
            self._cost.observe(time.perf_counter() - started, rows)
            return arrays
        arrays, seconds = await self.run_blocking(self._timed_run, feeds, names)
        self._cost.observe(seconds, rows)
        return arrays

    def _timed_run(self, feeds: dict[str, Any], names: list[str]) -> tuple[list[np.ndarray], float]:
        started = time.perf_counter()
        arrays = self._run(feeds, names)
        return arrays, time.perf_counter() - started

    def _run(self, feeds: dict[str, Any], names: list[str]) -> list[np.ndarray]:
        session = self._session
        assert session is not None, "model used before load()"
        try:
            if not self._io_binding:
                return session.run(names, feeds)
            binding = session.io_binding()
            for name, value in feeds.items():
                if isinstance(value, ort.OrtValue):
                    binding.bind_ortvalue_input(name, value)
                else:
                    binding.bind_cpu_input(name, value)
            for name in names:
                binding.bind_output(name, "cpu")
            session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()
        except _INPUT_ERRORS as exc:
            raise InvalidInput(f"onnxruntime rejected the input: {exc}") from None
        except _RUN_ERRORS as exc:
            raise InferenceError(f"onnxruntime failed: {exc}") from None


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (arg.shape or ()))
    return TensorSpec(arg.name, from_onnx(arg.type), shape)


def _feed(tensor: Tensor) -> Any:
    if tensor.datatype == "BYTES":
        return _strings(tensor)
    if tensor.datatype == "BF16":
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(tensor.data), _BF16)
    return tensor.data


def _strings(tensor: Tensor) -> np.ndarray:
    """A BYTES tensor's elements as the str objects onnxruntime takes for its string tensors."""
    try:
        return np.array([_text(v) for v in tensor.data.ravel()], dtype=np.object_).reshape(tensor.data.shape)
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{tensor.name}': the model takes strings, and an element is not UTF-8") from None


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
