"""The gRPC edge of the model server: a grpc.aio servicer of ``inference.GRPCInferenceService`` over the DataPlane.

Handlers are coroutines on the event loop (no thread pool: blocking model work already runs on each model's own
pool). Every error becomes a gRPC status in exactly one place, :func:`_failure`: a ServelaneError carries its
code and message; anything else is logged with its traceback and answered INTERNAL "Internal server error".
Unary calls abort with that status; ModelStreamInfer puts the message in the reply's ``error_message`` and keeps
the stream open. Message size limits are enforced by gRPC itself (RESOURCE_EXHAUSTED), before any handler runs.
Response headers a model's hooks set go back on a ModelInfer call as initial metadata (lower-case names; those
gRPC reserves or cannot carry as text are left out); a stream has one set of metadata for all its replies, so
ModelStreamInfer sends none.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from common.errors import ServelaneError, Unsupported
from model_server import codec_grpc
from model_server.config import ModelServerConfig
from model_server.dataplane import DataPlane
from model_server.grpc_gen import inference_pb2 as pb
from model_server.grpc_gen import inference_pb2_grpc as pb_grpc
from model_server.model import RequestContext
from model_server.repository import READY

log = logging.getLogger(__name__)

PROTOCOL = "grpc"
_INTERNAL_MESSAGE = "Internal server error"
# Triton's unload option; we serve no ensembles, so there are no dependents to unload and it changes nothing.
_UNLOAD_OPTIONS = frozenset({"unload_dependents"})
_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


@dataclass(frozen=True, slots=True)
class _Failure:
    code: grpc.StatusCode
    message: str


def _failure(exc: Exception) -> _Failure:
    """The one place where an exception becomes a gRPC status."""
    if isinstance(exc, ServelaneError):
        return _Failure(exc.grpc_code, exc.message)
    log.error("unhandled error in a gRPC handler", exc_info=exc)
    return _Failure(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE)


def _unary(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Answer a unary call with the status of whatever error its handler raises."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await handler(self, request, context)
        except Exception as exc:
            failure = _failure(exc)
            await context.abort(failure.code, failure.message)

    return wrapper


def _headers(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """Call metadata as request headers; binary (``-bin``) entries are not text, so they are left out."""
    headers: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _response_metadata(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Response headers as initial metadata: names lower-cased; a name gRPC reserves (``grpc-*``), a binary one
    (``*-bin``), or a name or value it cannot carry as text is left out."""
    metadata = []
    for name, value in headers.items():
        key, text = name.lower(), str(value)
        if (_METADATA_KEY.fullmatch(key) and not key.startswith("grpc-") and not key.endswith("-bin")
                and text.isascii() and text.isprintable()):
            metadata.append((key, text))
        else:
            log.debug("response header %r is not valid gRPC metadata; left out", name)
    return tuple(metadata)


def _check_repository_name(name: str) -> None:
    if name:
        raise Unsupported("'repository_name' specification is not supported: this server has one repository")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    # -- health and metadata -----------------------------------------------------------------------------------
    @_unary
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    @_unary
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.dataplane.ready())

    @_unary
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        ready = await self.dataplane.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    @_unary
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        metadata = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(
            name=metadata["name"], version=metadata["version"], extensions=metadata["extensions"]
        )

    @_unary
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        metadata = await self.dataplane.model_metadata(request.name, request.version or None)
        return codec_grpc.encode_model_metadata(metadata)

    # -- inference ---------------------------------------------------------------------------------------------
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        hooks = RequestContext(PROTOCOL, headers=_headers(context))
        result = await self._infer(request, hooks)
        if isinstance(result, _Failure):
            await context.abort(result.code, result.message)
        metadata = _response_metadata(hooks.response_headers)
        if metadata:
            await context.send_initial_metadata(metadata)
        return result

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # One request at a time, so replies come back in request order.
        headers = _headers(context)
        async for request in requests:
            result = await self._infer(request, RequestContext(PROTOCOL, headers=dict(headers)))
            if isinstance(result, _Failure):
                yield pb.ModelStreamInferResponse(error_message=result.message)
            else:
                yield pb.ModelStreamInferResponse(infer_response=result)

    async def _infer(self, message: pb.ModelInferRequest, hooks: RequestContext) -> pb.ModelInferResponse | _Failure:
        """Decode, infer, encode; count the outcome. A failure is returned, not raised, for the caller to send."""
        try:
            request = codec_grpc.decode_request(message)
            request.headers = dict(hooks.headers)
            response = await self.dataplane.infer(request, hooks)
            encoded = codec_grpc.encode_response(response)
        except Exception as exc:
            failure = _failure(exc)
            self.dataplane.count(message.model_name, PROTOCOL, failure.code.value[0])
            return failure
        self.dataplane.count(message.model_name, PROTOCOL, grpc.StatusCode.OK.value[0])
        return encoded

    # -- repository --------------------------------------------------------------------------------------------
    @_unary
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        _check_repository_name(request.repository_name)
        rows = self.dataplane.repository.index()
        if request.ready:
            rows = [row for row in rows if row["state"] == READY]
        models = [
            pb.RepositoryIndexResponse.ModelIndex(
                name=row["name"], version=row.get("version", ""), state=row["state"], reason=row.get("reason", "")
            )
            for row in rows
        ]
        return pb.RepositoryIndexResponse(models=models)

    @_unary
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        _check_repository_name(request.repository_name)
        if request.parameters:
            # Triton's config override and in-request model files: loading only ever reads the repository.
            raise Unsupported(f"load parameters are not supported: {', '.join(sorted(request.parameters))}")
        await self.dataplane.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_unary
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        _check_repository_name(request.repository_name)
        unknown = sorted(set(request.parameters) - _UNLOAD_OPTIONS)
        if unknown:
            raise Unsupported(f"unload parameters are not supported: {', '.join(unknown)}")
        await self.dataplane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def build_grpc_server(dataplane: DataPlane, config: ModelServerConfig) -> grpc.aio.Server:
    """The gRPC server with the inference service added; no port is bound yet (see :func:`add_port`)."""
    limit = config.grpc_max_message_bytes
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # gRPC sets SO_REUSEPORT by default, which lets a second server bind a port in use without an error.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane), server)
    return server


def add_port(server: grpc.aio.Server, host: str, port: int) -> int:
    """Listen on host:port without TLS (0 picks a free port); returns the port bound."""
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"gRPC could not listen on {address}")
    return bound
