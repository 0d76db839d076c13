"""The model interface the dataplane serves: load, metadata, and the preprocess → predict → postprocess hooks.

The payload a hook receives is an :class:`InferRequest` for V2 (REST and gRPC) and the decoded JSON object for
V1. Each hook (``load``, ``metadata``, ``preprocess``, ``predict``, ``postprocess``, ``explain``, ``unload``) may
be ``def`` or ``async def``; the server runs plain functions off the event loop (the inference hooks on the
model's bounded thread pool), never on it. ``metadata`` is asked once after ``load`` and its answer kept for
validating requests (:attr:`Model.described`); the metadata endpoints ask it again. The onnxruntime model is one
implementation; user classes are another.

Under dynamic batching one ``predict`` call serves several requests: its context carries the headers of the
batch's first request, requests whose ``batch_key_headers`` (by default ``authorization``) differ never share a
batch, and the response headers it sets go on every response of the batch.

A user class (``--model-class pkg.module:Cls`` or ``model_class:`` in config.yaml) subclasses :class:`Model`.
The repository builds it with :meth:`Model.create` (override it if your ``__init__`` takes other arguments),
sets ``path`` (its files), ``config`` (its config.yaml) and ``predictor`` (the ``--predictor-host`` client, if
any), then calls ``load()`` off the event loop (``async def load`` runs on the loop). The default ``predict``
forwards the (preprocessed) payload to the predictor, which makes a class that only overrides ``preprocess``
and ``postprocess`` a KServe-style transformer.

    class Reverse(Model):
        inputs = (TensorSpec("text", "BYTES", (-1,)),)   # declared tensors: requests are validated against them
        outputs = (TensorSpec("reversed", "BYTES", (-1,)),)

        def predict(self, request, context):              # plain def: runs on the model's thread pool
            text = request.input("text").data
            out = np.array([t[::-1] for t in text], dtype=object)
            context.response_headers["x-reversed"] = str(len(out))
            return InferResponse(self.name, [Tensor.from_array("reversed", out)], id="")
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import InferenceError, ModelNotReady, Unsupported
from model_server.model_config import ModelConfig
from model_server.types import InferRequest, ModelMetadata, TensorSpec

if TYPE_CHECKING:
    from model_server.batcher import Batcher
    from model_server.predictor_client import PredictorClient


@dataclass(slots=True)
class RequestContext:
    """What a hook may know of the request beyond its payload, and the response headers it may set."""

    protocol: str
    headers: dict[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class Model:
    """Base class of everything the model server serves. Subclasses override what they need."""

    platform = "python"
    inputs: tuple[TensorSpec, ...] = ()  # declared V2 inputs; when given, requests are validated against them
    outputs: tuple[TensorSpec, ...] = ()
    # Request headers (lower-case) whose values must match for requests to share a batched predict call: the
    # call sees one request's headers, and a transformer forwards authorization to its predictor.
    batch_key_headers: tuple[str, ...] = ("authorization",)

    def __init__(self, name: str, version: str = "1", *, instances: int = 1) -> None:
        self.name = name
        self.version = version
        self.ready = False
        self.max_batch_size = 0
        self.instances = max(1, instances)
        self.path: Path | None = None
        self.config = ModelConfig()
        self.predictor: PredictorClient | None = None
        self.batcher: Batcher | None = None  # made by the dataplane on first use, when config.dynamic_batching is set
        self.described: ModelMetadata | None = None  # the metadata hook's last answer (see describe())
        self._pool = ThreadPoolExecutor(max_workers=self.instances, thread_name_prefix=f"model-{name}")

    @classmethod
    def create(cls, name: str, version: str, path: Path | None, config: ModelConfig) -> Model:
        """How the repository builds a model of this class; override when ``__init__`` takes other arguments."""
        model = cls(name, version, instances=config.instances)
        model.path = path
        model.config = config
        model.max_batch_size = config.max_batch_size
        return model

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} v{self.version} ready={self.ready}>"

    def load(self) -> None:
        """Make the model ready to serve; may block (it runs off the event loop)."""
        self.ready = True

    def unload(self) -> None:
        self.ready = False
        self._pool.shutdown(wait=False)

    def metadata(self) -> ModelMetadata:
        return ModelMetadata(
            name=self.name, versions=(self.version,), platform=self.platform, inputs=self.inputs, outputs=self.outputs
        )

    async def describe(self) -> ModelMetadata:
        """Ask the metadata hook (``def``: on the pool; ``async def``: awaited) and remember the answer, which
        validates requests until the next call."""
        metadata = await self.call(self.metadata)
        if not isinstance(metadata, ModelMetadata):
            raise InferenceError(f"model {self.name}: metadata() returned {type(metadata).__name__}, "
                                 "not a ModelMetadata")
        self.described = metadata
        return metadata

    def check_request(self, request: InferRequest) -> None:
        """Checks of one V2 request beyond its declared inputs, made before it may join a batch, so that a bad
        request fails alone (raise :class:`~common.errors.InvalidInput`). Runs on the event loop: keep it cheap."""

    async def preprocess(self, payload: Any, context: RequestContext) -> Any:
        return payload

    async def predict(self, payload: Any, context: RequestContext) -> Any:
        """Without an override: forward to the predictor (``--predictor-host``), if there is one."""
        if self.predictor is None:
            raise Unsupported(f"Model {self.name} does not implement predict")
        return await self.predictor.forward(self.name, payload, context.headers)

    async def postprocess(self, result: Any, context: RequestContext) -> Any:
        return result

    async def explain(self, payload: Any, context: RequestContext) -> Any:
        raise Unsupported(f"Model {self.name} has no explainer")

    def has_explainer(self) -> bool:
        return type(self).explain is not Model.explain

    @property
    def has_preprocess(self) -> bool:
        """False while preprocess is the base class's identity, which the dataplane then skips."""
        return type(self).preprocess is not Model.preprocess

    @property
    def has_postprocess(self) -> bool:
        return type(self).postprocess is not Model.postprocess

    async def call(self, hook: Callable[..., Any], *args: Any) -> Any:
        """Call a hook: coroutine functions are awaited, plain functions run on this model's thread pool.

        The base class's hooks are coroutine functions, so identity pre/postprocessing costs no thread hop.
        """
        if _is_async(hook):
            return await hook(*args)
        return await self.run_blocking(hook, *args)

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on this model's bounded thread pool."""
        try:
            future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except RuntimeError:  # the pool was shut down: this version was unloaded or replaced meanwhile
            raise ModelNotReady(self.name, "It was unloaded.") from None
        return await future


class CallCost:
    """Decides whether a model call is cheap enough to run inline on the event loop.

    A hop to the thread pool costs about 40 µs of CPU (a queue, a wake-up, a callback), more than a small model's
    whole call. So a call whose predicted duration (seconds per row, times this call's rows) is under
    ``inline_max`` runs inline, where blocking the loop that long is harmless; the rest go to the pool. The
    prediction is the 75th percentile of the last window of measured calls, so a few slow outliers (a GC pause,
    a preempted thread) do not flip it; until a first window is measured every call goes to the pool.
    ``inline_max`` 0 turns inlining off.
    """

    WINDOW = 32

    def __init__(self, inline_max: float) -> None:
        self.inline_max = inline_max
        self.per_row: float | None = None
        self._window: list[float] = []

    def __repr__(self) -> str:
        per_row = "?" if self.per_row is None else f"{self.per_row * 1e6:.1f}us"
        return f"<CallCost per_row={per_row} inline_max={self.inline_max * 1e6:.0f}us>"

    def inline(self, rows: int) -> bool:
        per_row = self.per_row
        return per_row is not None and per_row * max(rows, 1) < self.inline_max

    def observe(self, seconds: float, rows: int) -> None:
        window = self._window
        window.append(seconds / max(rows, 1))
        if len(window) >= self.WINDOW:
            window.sort()
            self.per_row = window[len(window) * 3 // 4]
            window.clear()


_IS_ASYNC: dict[Any, bool] = {}


def _is_async(hook: Callable[..., Any]) -> bool:
    func = getattr(hook, "__func__", hook)
    known = _IS_ASYNC.get(func)
    if known is None:
        known = _IS_ASYNC[func] = inspect.iscoroutinefunction(func)
    return known
