"""Python model classes the custom-model tests serve (named in config.yaml ``model_class`` or ``--model-class``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np

from common.errors import InvalidInput
from model_server.model import Model, RequestContext
from model_server.types import InferRequest, InferResponse, Tensor, TensorSpec

ENTERED = threading.Event()  # set when Blocking.predict starts
RELEASE = threading.Event()  # Blocking.predict waits for it


class Reverse(Model):
    """Reverses strings, with plain ``def`` hooks (so they run on the model's thread pool). An empty string is the
    caller's mistake (InvalidInput); "boom" is a bug (RuntimeError)."""

    inputs = (TensorSpec("text", "BYTES", (-1,)),)
    outputs = (TensorSpec("reversed", "BYTES", (-1,)),)

    def predict(self, payload: Any, context: RequestContext) -> Any:
        context.response_headers["x-model-thread"] = threading.current_thread().name
        context.response_headers["x-seen-request-id"] = context.headers.get("x-request-id", "")
        if isinstance(payload, InferRequest):
            texts = [_text(v) for v in payload.input("text").data.reshape(-1)]
        else:
            texts = payload["instances"]
        if "" in texts:
            raise InvalidInput("text must not be empty")
        if "boom" in texts:
            raise RuntimeError("secret detail from /srv/user_model.py")
        out = [t[::-1] for t in texts]
        if not isinstance(payload, InferRequest):
            return {"predictions": out}
        return InferResponse(self.name, [Tensor.from_array("reversed", np.array(out, dtype=np.object_))], id="")

    def postprocess(self, result: Any, context: RequestContext) -> Any:
        context.response_headers["x-postprocess-thread"] = threading.current_thread().name
        return result


class Blocking(Model):
    def predict(self, payload: Any, context: RequestContext) -> Any:
        ENTERED.set()
        if not RELEASE.wait(timeout=20):
            raise RuntimeError("never released")
        return {"predictions": ["released"]}


class Greeter(Model):
    """Loads its greeting from its folder with an ``async def load`` (on the event loop)."""

    async def load(self) -> None:
        assert self.path is not None
        self.greeting = (self.path / "greeting.txt").read_text().strip()
        self.ready = True

    async def predict(self, payload: Any, context: RequestContext) -> Any:
        return {"predictions": [f"{self.greeting}, {name}" for name in payload["instances"]], "version": self.version}


class NeverReady(Model):
    def load(self) -> None:
        pass  # forgets to set self.ready


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class EchoHeaders(Model):
    """Answers with the request headers it saw (``name: value`` lines, sorted): as BYTES output ``headers`` over V2,
    as ``predictions`` over V1. Empty V1 ``instances`` are the caller's mistake; a V2 input named ``stall`` is never
    answered (only the caller's deadline, a cancellation, ends the call)."""

    async def predict(self, payload: Any, context: RequestContext) -> Any:
        lines = sorted(f"{k.lower()}: {v}" for k, v in context.headers.items() if k.lower().startswith(_SHOWN))
        if not isinstance(payload, InferRequest):
            if not payload.get("instances"):
                raise InvalidInput("echo needs at least one instance")
            return {"predictions": lines}
        if any(tensor.name == "stall" for tensor in payload.inputs):
            await asyncio.Event().wait()
        data = np.array([line.encode() for line in lines], dtype=np.object_)
        return InferResponse(self.name, [Tensor("headers", "BYTES", data.shape, data)], id="")


class Relay(Model):
    """A transformer that changes nothing: the base class's ``predict`` forwards to ``--predictor-host``."""


class Shout(Model):
    """Upper-cases V1 instances with plain ``def`` hooks, each noting in the response headers its thread and the
    request's ``x-tenant``; ``explain`` answers which thread explained, and for which tenant."""

    def preprocess(self, payload: Any, context: RequestContext) -> Any:
        _note(context, "preprocess")
        return [str(text).upper() for text in payload["instances"]]

    def predict(self, payload: Any, context: RequestContext) -> Any:
        return {"predictions": payload}

    def postprocess(self, result: Any, context: RequestContext) -> Any:
        _note(context, "postprocess")
        return result

    def explain(self, payload: Any, context: RequestContext) -> Any:
        return _explanation(payload, context)


class AsyncShout(Shout):
    """Shout with an ``async def explain`` (awaited on the event loop)."""

    async def explain(self, payload: Any, context: RequestContext) -> Any:
        return _explanation(payload, context)


def _note(context: RequestContext, hook: str) -> None:
    context.response_headers[f"x-{hook}-thread"] = threading.current_thread().name
    context.response_headers[f"x-{hook}-tenant"] = context.headers.get("x-tenant", "")


def _explanation(payload: Any, context: RequestContext) -> dict[str, Any]:
    return {"explanations": [f"{len(text)} letters" for text in payload["instances"]],
            "thread": threading.current_thread().name, "tenant": context.headers.get("x-tenant", "")}


_SHOWN = ("x-", "trace", "authorization", "cookie", "b3", "baggage")
