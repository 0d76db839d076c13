"""The protocol-agnostic core of the model server: health, metadata, repository calls and inference.

REST and gRPC adapters decode their wire format into domain types, call this, and encode what it returns. It
validates every request against the model's declared inputs and outputs before the model sees it, runs the
preprocess → predict → postprocess hooks, times each stage, and picks the requested outputs in order. For a model
with ``dynamic_batching``, the predict stage of a V2 request (or of anything preprocess turned into one) goes
through the model's :class:`~model_server.batcher.Batcher`; pre- and postprocess still run per request. With
``upstream_ready`` (a transformer's ``--predictor-health-check``), readiness also asks the predictor.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from common.errors import InferenceError, InvalidInput, ModelNotFound, Unsupported
from common.request_ids import RequestIds
from model_server.batcher import Batcher
from model_server.metrics import UNKNOWN_MODEL, ModelServerMetrics
from model_server.model import Model, RequestContext
from model_server.repository import READY, ModelRepository
from model_server.types import InferRequest, InferResponse, ModelMetadata

SERVER_NAME = "servelane"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("binary_tensor_data", "model_repository", "model_repository_extension")


UpstreamReady = Callable[[str], Awaitable[bool]]  # model name -> is the predictor serving it ready?


class DataPlane:
    def __init__(
        self, repository: ModelRepository, metrics: ModelServerMetrics, *, upstream_ready: UpstreamReady | None = None
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.upstream_ready = upstream_ready
        self._stage_metrics: dict[str, tuple[Any, ...]] = {}
        self._counters: dict[tuple[str, str, str], Any] = {}
        self.new_id = RequestIds().new

    # -- health and metadata -------------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        if not self.repository.all_ready():
            return False
        if self.upstream_ready is None:
            return True
        return all(await asyncio.gather(*(self.upstream_ready(name) for name in self.repository.names())))

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    def model_names(self) -> list[str]:
        return self.repository.names()

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        entry = self.repository.entry(name)
        if entry is None:
            raise ModelNotFound(name)
        if version and entry.state == READY and version not in entry.models:
            raise ModelNotFound(name, version)
        if entry.state == READY and self.upstream_ready is not None:
            return await self.upstream_ready(name)
        return entry.state == READY

    async def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        return await self.repository.get(name, version).describe()

    # -- repository ------------------------------------------------------------------------------------------
    async def load(self, name: str) -> None:
        await self.repository.load(name)
        self.refresh_model_metrics()

    async def unload(self, name: str) -> None:
        await self.repository.unload(name)
        self.refresh_model_metrics()

    def refresh_model_metrics(self) -> None:
        """Re-export per-model gauges from the repository's current state; series of gone models are removed."""
        self.metrics.providers.clear()
        self.metrics.model_ready.clear()
        self._stage_metrics.clear()
        self._counters.clear()
        for entry in self.repository.entries():
            self.metrics.model_ready.labels(entry.name).set(1 if entry.state == READY else 0)
            for version, model in entry.models.items():
                described = model.described.parameters if model.described is not None else {}
                for provider in described.get("execution_providers", ()):
                    self.metrics.providers.labels(entry.name, version, provider).set(1)

    def count(self, model_name: str, protocol: str, code: int | str) -> None:
        key = (model_name if self.repository.has(model_name) else UNKNOWN_MODEL, protocol, str(code))
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.metrics.requests.labels(*key)
        counter.inc()

    # -- inference -------------------------------------------------------------------------------------------
    def model(self, name: str, version: str | None = None) -> Model:
        """The model a request names: 404 if unknown, 503 if not ready. Edges call it before decoding a body."""
        return self.repository.get(name, version)

    async def infer(self, request: InferRequest, context: RequestContext) -> InferResponse:
        model = self.repository.get(request.model_name, request.model_version)
        metadata = model.described or await model.describe()
        validate(request, metadata, model.max_batch_size)
        if request.inputs and request.inputs[0].shape:
            self._stages(model.name)[4].observe(request.inputs[0].shape[0])
        result = await self._pipeline(model, request, context)
        if not isinstance(result, InferResponse):
            raise InferenceError(f"model {model.name} returned {type(result).__name__}, not an InferResponse")
        return select_outputs(result, request, model, self.new_id)

    async def predict_v1(self, name: str, body: Any, context: RequestContext) -> Any:
        model = self.repository.get(name)
        if not isinstance(body, dict):
            raise InvalidInput('Expected a JSON object with "instances" or "inputs"')
        if "instances" in body and not isinstance(body["instances"], list):
            raise InvalidInput('Expected "instances" to be a list')
        rows = body.get("inputs", body.get("instances"))  # "inputs" wins, as in codec_v1
        if isinstance(rows, list):
            self._stages(model.name)[4].observe(len(rows))
        return await self._pipeline(model, body, context)

    async def explain_v1(self, name: str, body: Any, context: RequestContext) -> Any:
        model = self.repository.get(name)
        if not model.has_explainer():
            raise Unsupported(f"Model {name} has no explainer.")
        started = time.perf_counter()
        result = await model.call(model.explain, body, context)
        self.metrics.explain.labels(model.name).observe(time.perf_counter() - started)
        return result

    async def _pipeline(self, model: Model, payload: Any, context: RequestContext) -> Any:
        pre, predict, post = self._stages(model.name)[:3]
        t0 = time.perf_counter()
        if model.has_preprocess:
            payload = await model.call(model.preprocess, payload, context)
        t1 = time.perf_counter()
        batcher = self._batcher(model) if isinstance(payload, InferRequest) else None
        if batcher is not None:
            model.check_request(payload)  # a request that would fail its whole batch fails alone, here
            result = await batcher.submit(payload, context)
        else:
            result = await model.call(model.predict, payload, context)
        t2 = time.perf_counter()
        if model.has_postprocess:
            result = await model.call(model.postprocess, result, context)
        t3 = time.perf_counter()
        pre.observe(t1 - t0)
        predict.observe(t2 - t1)
        post.observe(t3 - t2)
        context.timings.update(preprocess=t1 - t0, predict=t2 - t1, postprocess=t3 - t2)
        return result

    def _batcher(self, model: Model) -> Batcher | None:
        batcher = model.batcher
        config = model.config.dynamic_batching
        if batcher is None and config is not None:
            spec = model.described.inputs if model.described is not None else ()
            batcher = model.batcher = Batcher(
                model.name,
                functools.partial(model.call, model.predict),
                config,
                slots=model.instances,
                fixed_inputs=frozenset(s.name for s in spec if not s.shape or s.shape[0] != -1),
                key_headers=model.batch_key_headers,
                on_batch=functools.partial(self._observe_batch, model.name),
            )
        return batcher

    def _observe_batch(self, name: str, rows: int, waits: list[float]) -> None:
        batch_rows, batch_requests, queue_wait = self._stages(name)[5:]
        batch_rows.observe(rows)
        batch_requests.observe(len(waits))
        for wait in waits:
            queue_wait.observe(wait)

    def _stages(self, name: str) -> tuple[Any, ...]:
        children = self._stage_metrics.get(name)
        if children is None:
            m = self.metrics
            children = (
                m.preprocess.labels(name),
                m.predict.labels(name),
                m.postprocess.labels(name),
                m.explain.labels(name),
                m.batch_size.labels(name),
                m.batch_rows.labels(name),
                m.batch_requests.labels(name),
                m.batch_queue_wait.labels(name),
            )
            self._stage_metrics[name] = children
        return children


def validate(request: InferRequest, metadata: ModelMetadata, max_batch_size: int) -> None:
    """Check inputs and requested outputs against what the model declares (models declaring nothing skip it)."""
    name = metadata.name
    if metadata.inputs:
        specs = {spec.name: spec for spec in metadata.inputs}
        seen: set[str] = set()
        for tensor in request.inputs:
            spec = specs.get(tensor.name)
            if spec is None:
                raise InvalidInput(f"unexpected inference input '{tensor.name}' for model '{name}'")
            if tensor.name in seen:
                raise InvalidInput(f"input '{tensor.name}' appears more than once")
            seen.add(tensor.name)
            if tensor.datatype != spec.datatype:
                raise InvalidInput(
                    f"input '{tensor.name}' has datatype {tensor.datatype}, model '{name}' expects {spec.datatype}"
                )
            if len(tensor.shape) != len(spec.shape) or any(
                want != -1 and got != want for got, want in zip(tensor.shape, spec.shape)
            ):
                raise InvalidInput(
                    f"input '{tensor.name}' has shape {list(tensor.shape)}, model '{name}' expects {list(spec.shape)}"
                )
            if max_batch_size and tensor.shape and tensor.shape[0] > max_batch_size:
                raise InvalidInput(
                    f"input '{tensor.name}' has batch size {tensor.shape[0]}, over the maximum of {max_batch_size} "
                    f"for model '{name}'"
                )
        missing = [spec.name for spec in metadata.inputs if spec.name not in seen]
        if missing:
            raise InvalidInput(f"model '{name}' expects input(s) {', '.join(missing)}, which the request lacks")
    if request.outputs and metadata.outputs:
        known = {spec.name for spec in metadata.outputs}
        for out in request.outputs:
            if out.name not in known:
                raise InvalidInput(f"Unexpected inference output '{out.name}' for model '{name}'")


def select_outputs(
    response: InferResponse, request: InferRequest, model: Model, new_id: Callable[[], str]
) -> InferResponse:
    """Only the requested outputs, in the requested order; the request's id echoed (a new one if it had none)."""
    if request.outputs:
        produced = {tensor.name: tensor for tensor in response.outputs}
        chosen = []
        for out in request.outputs:
            tensor = produced.get(out.name)
            if tensor is None:
                raise InvalidInput(f"Unexpected inference output '{out.name}' for model '{model.name}'")
            chosen.append(tensor)
        response.outputs = chosen
    response.id = request.id or response.id or new_id()
    response.model_name = model.name
    response.model_version = response.model_version or model.version
    return response
