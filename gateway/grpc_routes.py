"""gRPC routing for the gateway: which revision a call goes to, as a ``route`` hook of :mod:`common.grpc_proxy`.

A call is routed, in this order, by:

1. the ``x-servelane-host`` metadata entry (:data:`HOST_HEADER`), holding a host as on HTTP
   (``sklearn-iris-predictor.default.example.com``, a tag host, a cluster-local name ...);
2. when there is none, the call's ``:authority`` (what a client sets with ``grpc.default_authority``), which
   :mod:`gateway.grpc_front` adds as the last ``x-servelane-authority`` entry: a host as on HTTP;
3. when neither is there, or the one there names the gateway itself (``localhost:8081``, a plain client's
   authority), the model name in the first request message, for
   ``ModelInfer``, ``ModelStreamInfer``, ``ModelMetadata`` and ``ModelReady`` of ``inference.GRPCInferenceService``
   (field 1, a string, in all four; read from the raw bytes by :func:`model_name`, nothing else decoded): the
   service whose ``models`` has it, its entry component;
4. anything else: NOT_FOUND. A host the gateway does not know, by header or authority, is NOT_FOUND too.

A transformer calling its predictor through the gateway must name it (``x-servelane-host`` or the authority
``<isvc>-predictor.<ns>.<domain>``): by model name alone its call would reach the service's entry component, the
transformer itself.

``ServerLive``, ``ServerReady`` and ``ServerMetadata`` with neither ``x-servelane-host`` nor an authority naming a
service are answered by the gateway itself (:class:`ServerMethods`): live while it runs, ready once it has a
routing state (as ``/readyz``), and its own name. Otherwise they go to the service named, like any call.

Each routed call gets ``knative-serving-revision``/``knative-serving-namespace`` metadata (the client's own are
dropped), ``x-request-id`` (generated when absent, sent back in the initial metadata, or in the trailers of an
error the gateway answers itself), the revision's timeout as its total timeout, and one lease on a replica's gRPC
port for its whole duration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from types import TracebackType

import grpc

from common.errors import NotFound, ServelaneError, Unavailable, http_status_of
from common.grpc_proxy import OIP_SERVICE, Call, CallOutcome, text_metadata
from common.request_ids import RequestIds
from gateway.balancer import Backends, Lease
from gateway.config import SERVER_NAME, SERVER_VERSION
from gateway.grpc_front import AUTHORITY_HEADER
from gateway.metrics import GatewayMetrics
from gateway.routing import Destination, RoutingTable, split_host

HOST_HEADER = "x-servelane-host"
SERVICE = OIP_SERVICE
MODEL_METHODS = frozenset(SERVICE + m for m in ("ModelInfer", "ModelStreamInfer", "ModelMetadata", "ModelReady"))
# Never taken from a client: the gateway sets the first two itself, and the queue-proxy would make the third the Host.
DROPPED = frozenset(
    {"knative-serving-revision", "knative-serving-namespace", "k-original-host", HOST_HEADER, AUTHORITY_HEADER}
)


class GrpcRouter:
    """The ``route`` hook: ``router(call)`` is an async context manager that routes the call and records it."""

    def __init__(
        self, table: Callable[[], RoutingTable | None], backends: Backends, metrics: GatewayMetrics,
        request_ids: RequestIds,
    ) -> None:  # fmt: skip
        self.table = table
        self.backends = backends
        self.metrics = metrics
        self.request_ids = request_ids

    def __call__(self, call: Call) -> RoutedCall:
        return RoutedCall(self, call)


class RoutedCall:
    __slots__ = ("router", "call", "started", "revision", "lease", "outcome")

    def __init__(self, router: GrpcRouter, call: Call) -> None:
        self.router, self.call = router, call
        self.started = time.perf_counter()
        self.revision: str | None = None
        self.lease: Lease | None = None
        self.outcome = CallOutcome()

    async def __aenter__(self) -> CallOutcome:
        call = self.call
        request_id = call.metadata.get("x-request-id")
        call.reply_metadata = (("x-request-id", request_id or self.router.request_ids.new()),)
        try:
            await self._route()
        except ServelaneError as exc:
            self._record(exc.http_status)
            raise
        except asyncio.CancelledError:  # the client went away while we read its first message
            self._record(499)
            raise
        if not request_id:
            call.extra_metadata += call.reply_metadata
        return self.outcome

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.lease is not None:
            self.lease.release()
        self._record(http_status_of(self.outcome.code))

    async def _route(self) -> None:
        call = self.call
        table = self.router.table()
        if table is None:
            raise Unavailable("no routing state loaded yet")
        destination = await _destination(table, call)
        revision = table.pick(destination, call.metadata.get("knative-serving-tag"))
        self.revision = revision.name
        self.lease = self.router.backends.acquire(revision, "grpc")
        call.upstream = self.lease.address
        call.timeout = revision.timeout
        call.extra_metadata = (
            ("knative-serving-revision", revision.name),
            ("knative-serving-namespace", revision.namespace),
        )

    def _record(self, status: int) -> None:
        self.router.metrics.observe(self.revision, "grpc", status, time.perf_counter() - self.started)


async def _destination(table: RoutingTable, call: Call) -> Destination:
    host = call.metadata.get(HOST_HEADER) or authority(call.metadata)
    destination = table.match_host(host) if host else None
    if destination is not None:
        return destination
    if call.method not in MODEL_METHODS:
        raise NotFound(f"cannot route {call.method}: set {HOST_HEADER} to a service's host")
    first = await call.first_message()
    return table.match_model(None if first is None else model_name(first))


def authority(metadata: Mapping[str, str]) -> str | None:
    """The authority the front added: the last ``x-servelane-authority`` value (a client's own come before it and
    are joined with ", ", which no authority contains)."""
    joined = metadata.get(AUTHORITY_HEADER)
    return joined.rpartition(", ")[2] if joined else None


def model_name(message: bytes) -> str | None:
    """Field 1 (a length-delimited string) of a serialized message, scanning only as far as that field; None when
    it is absent or the bytes are not a well-formed message. Serializers write fields in number order, so a
    ModelInferRequest's model name comes before its tensors and those are never walked."""
    pos, end = 0, len(message)
    try:
        while pos < end:
            key, pos = _varint(message, pos)
            field, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(message, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length, pos = _varint(message, pos)
                if pos + length > end:
                    return None
                if field == 1:
                    return message[pos : pos + length].decode()
                pos += length
            else:
                return None  # groups (3, 4) are not in these messages; 6 and 7 do not exist
    except (IndexError, UnicodeDecodeError):
        return None
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


class ServerMethods(grpc.GenericRpcHandler):
    """ServerLive, ServerReady and ServerMetadata answered by the gateway when the call has no ``x-servelane-host``
    and its authority is the gateway's own (or unknown to the front); otherwise this handler declines and the call
    is routed."""

    def __init__(self, table: Callable[[], RoutingTable | None]) -> None:
        self._table = table
        self._methods = {
            SERVICE + "ServerLive": grpc.unary_unary_rpc_method_handler(self._live),
            SERVICE + "ServerReady": grpc.unary_unary_rpc_method_handler(self._ready_answer),
            SERVICE + "ServerMetadata": grpc.unary_unary_rpc_method_handler(self._metadata),
        }

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._methods.get(handler_call_details.method)
        if handler is None:
            return None
        metadata = text_metadata(handler_call_details.invocation_metadata or ())
        if HOST_HEADER in metadata:
            return None
        host = authority(metadata)
        table = self._table()
        if host and table is not None and not table.is_own(*split_host(host)):
            return None  # the authority names a service (or an unknown host): routed like any call
        return handler

    async def _live(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return _bool_field(True)

    async def _ready_answer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return _bool_field(self._table() is not None)

    async def _metadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return _string_field(1, SERVER_NAME) + _string_field(2, SERVER_VERSION)


def _bool_field(value: bool) -> bytes:
    """A message whose field 1 is this bool (ServerLiveResponse.live, ServerReadyResponse.ready)."""
    return b"\x08\x01" if value else b""  # proto3 leaves a false scalar out


def _string_field(number: int, value: str) -> bytes:
    data = value.encode()
    assert len(data) < 128, "a one-byte length is all these short names need"
    return bytes([number << 3 | 2, len(data)]) + data
