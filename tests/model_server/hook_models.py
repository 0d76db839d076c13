"""Python model classes for the hook tests: a metadata hook as ``async def`` and as ``def``, unload both ways, and
response headers a hook sets (served by ``model_class`` in config.yaml)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from model_server.model import Model, RequestContext
from model_server.types import InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec

X = TensorSpec("x", "FP32", (-1, 2))
Y = TensorSpec("y", "FP32", (-1, 2))
UNLOADED: dict[str, str] = {}  # model name -> the thread its unload ran on ("loop" for async def)


class _Doubler(Model):
    """y = 2x; sets a response header valid as gRPC metadata and one that is not."""

    def predict(self, payload: Any, context: RequestContext) -> Any:
        assert isinstance(payload, InferRequest)
        context.response_headers["x-doubled-by"] = self.name
        context.response_headers["Bad Header Name"] = "left out of gRPC metadata"
        x = payload.input("x").data
        return InferResponse(self.name, [Tensor.from_array("y", x * 2)], id="")


class AsyncMetadata(_Doubler):
    """Declares its tensors from an ``async def metadata``, counting the calls."""

    calls = 0

    async def metadata(self) -> ModelMetadata:
        await asyncio.sleep(0)
        type(self).calls += 1
        return ModelMetadata(self.name, (self.version,), "async-meta", (X,), (Y,), {"calls": type(self).calls})

    async def unload(self) -> None:
        UNLOADED[self.name] = "loop"
        super().unload()


class SyncMetadata(_Doubler):
    """Declares its tensors from a plain ``def metadata``, noting the thread it runs on."""

    threads: list[str] = []

    def metadata(self) -> ModelMetadata:
        type(self).threads.append(threading.current_thread().name)
        return ModelMetadata(self.name, (self.version,), "sync-meta", (X,), (Y,))

    def unload(self) -> None:
        UNLOADED[self.name] = threading.current_thread().name
        super().unload()
