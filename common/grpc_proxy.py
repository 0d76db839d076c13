"""The gRPC (h2c) pass-through of the proxy core: any method, any kind, raw bytes, to a fixed or a per-call upstream.

Owns a grpc.aio server on its own port whose one generic handler accepts every method path (after any
``handlers`` the caller puts first), and the channels to upstreams (``host:port``), one per upstream. Messages are
never decoded: no serializers on either side, so bytes go through as they came. A call to a method known to be
unary (:data:`UNARY_METHODS`: every method of the Open Inference Protocol's ``inference.GRPCInferenceService`` but
``ModelStreamInfer``) is served and forwarded as unary-unary; any other is handled as stream-stream on both sides,
which carries all four kinds, since on the wire a unary call is the same HTTP/2 exchange (headers, framed messages,
trailers) as a streaming one. The unary path does the same per call with less of grpc python's machinery: the
queue-proxy in front of the iris predictor spent a fifth to a quarter less CPU per ``ModelInfer`` (c1: 616 µs
against 781; c16: 436 against 609; medians of 4 rounds taken in turn, 2026-12-05).

Two ways to build one:

- :func:`build_grpc_proxy` (the queue-proxy): one fixed upstream, its channel opened in :meth:`GrpcProxy.start`;
  ``admit(metadata)`` gates each call.
- :func:`build_routing_grpc_proxy` (the gateway): ``route(call)`` gates each call *and* chooses where it goes by
  setting ``call.upstream`` (and optionally ``call.timeout``, ``call.extra_metadata``, ``call.reply_metadata``).
  It may read the first request message with ``await call.first_message()`` (model-name routing); that message
  is still sent upstream first. A channel is opened on an upstream's first call; :meth:`GrpcProxy.retain` names
  the upstreams still in use, and a channel to any other closes once its last call has ended.

One call, top to bottom::

    admit / route(call)        the caller's gate (breaker, routing, stats, metrics); wraps everything below
    upstream call              deadline: what is left of the timeout and of the client's own deadline
    relay                      initial metadata, each message, trailing metadata, status code and details

Metadata goes upstream minus what gRPC writes itself and the names the caller asks to ``drop`` (the queue-proxy
drops Knative's routing headers, ``k-original-host`` among them), plus ``call.extra_metadata``. grpc python can
neither set ``:authority`` per call on a channel nor read it on a server: neither the servicer context nor the
handler call details carry it (grpc/grpc#38906, open); the gateway puts a relay in front of this proxy that shows
it to its router as metadata (:mod:`gateway.grpc_front`).

Errors become a gRPC status in one place, :func:`_failure`::

    ServelaneError from admit/route its grpc_code and message (QueueFull: UNAVAILABLE "pending request queue full")
    upstream unreachable            UpstreamError: UNAVAILABLE "upstream unreachable: ..."
    the timeout spent (queue+call)  UpstreamTimeout: DEADLINE_EXCEEDED, the upstream call cancelled
    a status the upstream sent      relayed as it came, with its trailing metadata (not an error here)
    anything else                   logged with its traceback; INTERNAL "Internal server error"

A client that cancels cancels the upstream call. :meth:`GrpcProxy.stop` refuses new calls at once and gives the
ones in flight ``grace`` seconds before they are cancelled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass

import grpc

from common.errors import ServelaneError, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]

# Entries gRPC writes itself (in either direction): a copy would clash with them or be ignored.
_TRANSPORT = frozenset(
    "user-agent content-type te host connection keep-alive proxy-connection transfer-encoding upgrade grpc-timeout"
    " grpc-encoding grpc-accept-encoding grpc-status grpc-message".split()
)
# What grpc core says when it made up the status itself, on this side of the upstream connection.
_CONNECT_FAILED = "failed to connect to all addresses"
_LOCAL_DEADLINE = "Deadline Exceeded"
_INTERNAL_MESSAGE = "Internal server error"
OIP_SERVICE = "/inference.GRPCInferenceService/"  # the Open Inference Protocol's gRPC service, as a method path prefix
UNARY_METHODS = frozenset(
    OIP_SERVICE + name
    for name in (
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
        # Triton's own extensions of the service, all unary as well
        "ModelConfig", "ModelStatistics", "SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus", "CudaSharedMemoryRegister",
        "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings",
    )
)  # fmt: skip


@dataclass(slots=True)
class CallOutcome:
    """The final status of one proxied call; the proxy sets ``code`` before the admitter's context exits."""

    code: grpc.StatusCode = grpc.StatusCode.OK


@dataclass(slots=True, eq=False)
class Call:
    """One incoming call as a router sees it, and what the router decides for it.

    Read: ``method`` (``/package.Service/Method``), ``metadata`` (text metadata as headers: repeated keys joined
    with ", ", ``-bin`` left out), ``await first_message()``. Set: ``upstream`` (``host:port``), ``timeout`` (total
    seconds from arrival, None: the proxy's), ``extra_metadata`` (sent upstream besides the client's),
    ``reply_metadata`` (sent back: with the initial metadata, or as trailers of an error answered here).
    """

    method: str
    metadata: dict[str, str]
    _requests: AsyncIterator[bytes]
    upstream: str | None = None
    timeout: float | None = None
    extra_metadata: Metadata = ()
    reply_metadata: Metadata = ()
    _first: bytes | None = None
    _peeked: bool = False
    unary: bool = False  # one request message, already read (``_first``), and one response
    response: bytes | None = None  # a unary call's, once relayed

    def __repr__(self) -> str:
        return f"<Call {self.method} upstream={self.upstream}>"

    async def first_message(self) -> bytes | None:
        """The first request message (None if the client sent none); it still goes upstream first."""
        if not self._peeked:
            self._peeked = True
            self._first = await anext(aiter(self._requests), None)
        return self._first

    def requests(self) -> AsyncIterator[bytes]:
        return _prepend(self._first, self._requests) if self._peeked else self._requests


Admit = Callable[[dict[str, str]], AbstractAsyncContextManager[CallOutcome]]
Route = Callable[[Call], AbstractAsyncContextManager[CallOutcome]]


def build_grpc_proxy(
    upstream: str,
    *,
    admit: Admit,
    timeout: float | None,
    max_message_bytes: int,
    drop: frozenset[str] = frozenset(),
    unary: frozenset[str] = UNARY_METHODS,
) -> GrpcProxy:
    """A proxy to ``upstream`` (``host:port``) gated by ``admit``; ``timeout`` is total seconds, None for none;
    ``drop``: lower-case metadata names never sent upstream; ``unary``: the method paths served as unary-unary."""
    _check(timeout, max_message_bytes)
    return GrpcProxy(
        lambda call: admit(call.metadata), timeout, max_message_bytes, drop, upstream=upstream, unary=unary
    )


def build_routing_grpc_proxy(
    *,
    route: Route,
    max_message_bytes: int,
    timeout: float | None = None,
    drop: frozenset[str] = frozenset(),
    handlers: Sequence[grpc.GenericRpcHandler] = (),
    unary: frozenset[str] = UNARY_METHODS,
) -> GrpcProxy:
    """A proxy whose ``route(call)`` picks each call's upstream; ``handlers`` are asked first for every method
    (one that returns None for a call leaves it to the proxy)."""
    _check(timeout, max_message_bytes)
    return GrpcProxy(route, timeout, max_message_bytes, drop, handlers=handlers, unary=unary)


def _check(timeout: float | None, max_message_bytes: int) -> None:
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be > 0 seconds (or None for no limit)")
    if max_message_bytes <= 0:
        raise ValueError("max_message_bytes must be > 0")


class GrpcProxy:
    def __init__(
        self,
        route: Route,
        timeout: float | None,
        max_message_bytes: int,
        drop: frozenset[str],
        *,
        upstream: str | None = None,
        handlers: Sequence[grpc.GenericRpcHandler] = (),
        unary: frozenset[str] = UNARY_METHODS,
    ) -> None:
        self.upstream = upstream
        self._unary_methods = unary
        self._drop = drop
        self._route = route
        self._timeout = timeout
        self._handlers = tuple(handlers)
        self._options = (
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        )
        self._server: grpc.aio.Server | None = None
        self._channels = _Channels(self._options)

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        return f"<GrpcProxy upstream={self.upstream or 'routed'} timeout={self._timeout} {state}>"

    @property
    def channels(self) -> list[str]:
        """The upstreams with an open channel."""
        return self._channels.open()

    async def start(self, host: str, port: int) -> int:
        """Open the fixed upstream's channel, if any, and listen on host:port without TLS (0 picks a free port);
        the port bound."""
        return await self.listen(_address(host, port))

    async def listen(self, address: str) -> int:
        """:meth:`start` on a gRPC address (``host:port``, ``unix:/path``); what grpc's ``add_insecure_port`` gives."""
        if self.upstream is not None:
            self._channels.pin(self.upstream)
        # gRPC sets SO_REUSEPORT by default, which lets a second server bind a port in use without an error.
        server = grpc.aio.server(options=(*self._options, ("grpc.so_reuseport", 0)))
        server.add_generic_rpc_handlers((*self._handlers, _AnyMethod(self._call, self._unary, self._unary_methods)))
        try:
            bound = server.add_insecure_port(address)
            await server.start()
        except BaseException:
            await self._channels.close()
            raise
        self._server = server
        return bound

    def retain(self, upstreams: Iterable[str]) -> None:
        """Keep channels to these upstreams; any other closes when its last call ends (at once if idle)."""
        self._channels.retain(upstreams)

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let those in flight finish within ``grace`` seconds, then close the channels."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
        await self._channels.close()

    async def _unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes | None:
        received: Metadata = tuple(context.invocation_metadata() or ())
        call = Call(method, text_metadata(received), _NO_REQUESTS, _first=request, _peeked=True, unary=True)
        await self._serve(call, context, received)
        return call.response  # None with a status other than OK set, as grpc allows

    async def _call(self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        received: Metadata = tuple(context.invocation_metadata() or ())
        await self._serve(Call(method, text_metadata(received), requests), context, received)

    async def _serve(self, call: Call, context: grpc.aio.ServicerContext, received: Metadata) -> None:
        try:
            await self._admit_and_relay(call, context, received)
        except Exception as exc:
            if not isinstance(exc, ServelaneError):
                log.error("unhandled error in the gRPC proxy", exc_info=exc)
            if call.reply_metadata:
                context.set_trailing_metadata(call.reply_metadata)
            await context.abort(*_failure(exc))

    async def _admit_and_relay(self, call: Call, context: grpc.aio.ServicerContext, received: Metadata) -> None:
        arrived = asyncio.get_running_loop().time()
        deadline = None if self._timeout is None else arrived + self._timeout
        async with AsyncExitStack() as stack:
            outcome = await self._admitted(stack, call, deadline)
            if call.timeout is not None:
                deadline = min(arrived + call.timeout, deadline or float("inf"))
            try:
                outcome.code = await self._relay(call, context, received, deadline)
            except BaseException as exc:
                outcome.code = _failure(exc)[0]
                raise

    async def _admitted(self, stack: AsyncExitStack, call: Call, deadline: float | None) -> CallOutcome:
        """Enter ``admit``/``route`` on ``stack``; waiting for admission counts against ``timeout``."""
        try:
            async with asyncio.timeout_at(deadline):
                return await stack.enter_async_context(self._route(call))
        except TimeoutError:
            raise UpstreamTimeout(_timed_out(self._timeout)) from None

    async def _relay(
        self, call: Call, context: grpc.aio.ServicerContext, received: Metadata, deadline: float | None
    ) -> grpc.StatusCode:
        """Forward one call upstream and relay everything that comes back; the final status code."""
        upstream = call.upstream or self.upstream
        if upstream is None:
            raise RuntimeError(f"the router chose no upstream for {call.method}")
        timeout = _time_left(deadline, context.time_remaining())
        metadata = _upstream(received, self._drop) + call.extra_metadata
        channel = self._channels.acquire(upstream)
        try:
            if call.unary:
                upstream_call: grpc.aio.Call = channel.unary_unary(call.method)(
                    call._first, metadata=metadata, timeout=timeout
                )
            else:
                upstream_call = channel.stream_stream(call.method)(call.requests(), metadata=metadata, timeout=timeout)
            try:
                if call.unary:
                    call.response = await _reply(upstream_call, context, call.reply_metadata)  # type: ignore[arg-type]
                else:
                    await _pipe(upstream_call, context, call.reply_metadata)  # type: ignore[arg-type]
            except grpc.aio.AioRpcError as err:
                return self._relay_status(err, context, call)
            finally:
                upstream_call.cancel()  # a no-op once the call is done; otherwise (cancelled, failed) it must stop
        finally:
            self._channels.release(upstream)
        return grpc.StatusCode.OK

    def _relay_status(
        self, err: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext, call: Call
    ) -> grpc.StatusCode:
        """Relay a non-OK status the upstream sent; raise the translation of one grpc made up on this side."""
        code, details = err.code(), err.details() or ""
        if code is grpc.StatusCode.UNAVAILABLE and details.startswith(_CONNECT_FAILED):
            reason = "connection refused" if "Connection refused" in details else "cannot connect"
            raise UpstreamError(f"upstream unreachable: {reason}")
        limit = call.timeout if call.timeout is not None else self._timeout
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and details == _LOCAL_DEADLINE and limit is not None:
            raise UpstreamTimeout(_timed_out(limit))
        context.set_trailing_metadata(_merge(_response(err.trailing_metadata() or ()), call.reply_metadata))
        context.set_code(code)
        context.set_details(details)
        return code


class _Channels:
    """One channel per upstream, counted by the calls using it; a retired channel closes when its count is 0."""

    def __init__(self, options: tuple[tuple[str, int], ...]) -> None:
        self._options = options
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._users: dict[str, int] = {}
        self._pinned: set[str] = set()
        self._live: frozenset[str] | None = None  # None: every upstream is live (nothing retired yet)
        self._closing: set[asyncio.Task[None]] = set()

    def open(self) -> list[str]:
        return sorted(self._channels)

    def pin(self, upstream: str) -> None:
        self._pinned.add(upstream)
        self._get(upstream)

    def acquire(self, upstream: str) -> grpc.aio.Channel:
        self._users[upstream] = self._users.get(upstream, 0) + 1
        return self._get(upstream)

    def release(self, upstream: str) -> None:
        users = self._users[upstream] - 1
        if users:
            self._users[upstream] = users
            return
        del self._users[upstream]
        if not self._is_live(upstream):
            self._close(upstream)

    def retain(self, upstreams: Iterable[str]) -> None:
        self._live = frozenset(upstreams)
        for upstream in [u for u in self._channels if u not in self._users and not self._is_live(u)]:
            self._close(upstream)

    async def close(self) -> None:
        for upstream in list(self._channels):
            self._close(upstream)
        if self._closing:
            await asyncio.gather(*self._closing)

    def _is_live(self, upstream: str) -> bool:
        return self._live is None or upstream in self._live or upstream in self._pinned

    def _get(self, upstream: str) -> grpc.aio.Channel:
        channel = self._channels.get(upstream)
        if channel is None:
            channel = self._channels[upstream] = grpc.aio.insecure_channel(upstream, options=self._options)
        return channel

    def _close(self, upstream: str) -> None:
        channel = self._channels.pop(upstream, None)
        if channel is not None:
            task = asyncio.get_running_loop().create_task(channel.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)


class _AnyMethod(grpc.GenericRpcHandler):
    """Serves every method path, bound to the path: unary-unary for the proxy's unary methods, else stream-stream."""

    def __init__(self, call: Callable[..., object], unary: Callable[..., object], methods: frozenset[str]) -> None:
        self._call = call
        # built once; each a plain coroutine function, not a partial: grpc asks inspect whether a handler is a
        # coroutine function on every call, and a partial costs it a signature walk each time
        self._unary = {m: grpc.unary_unary_rpc_method_handler(_bound(unary, m)) for m in methods}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = self._unary.get(method)
        if handler is not None:
            return handler
        return grpc.stream_stream_rpc_method_handler(functools.partial(self._call, method))


def _bound(unary: Callable[..., Awaitable[bytes | None]], method: str) -> Callable[..., Awaitable[bytes | None]]:
    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes | None:
        return await unary(method, request, context)

    return handle


class _NoMoreRequests:
    """A unary Call's request stream: its one message is already read (``Call._first``), nothing follows."""

    def __aiter__(self) -> _NoMoreRequests:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


_NO_REQUESTS = _NoMoreRequests()


async def _prepend(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is None:
        return
    yield first
    async for message in rest:
        yield message


async def _pipe(call: grpc.aio.StreamStreamCall, context: grpc.aio.ServicerContext, reply: Metadata) -> None:
    """Relay initial metadata, then each message, then trailing metadata; an upstream error raises AioRpcError."""
    initial = _merge(_response(await call.initial_metadata() or ()), reply)
    if initial:  # otherwise gRPC sends none, or a trailers-only answer, just as the upstream did
        await context.send_initial_metadata(initial)
    async for message in call:
        await context.write(message)
    context.set_trailing_metadata(_response(await call.trailing_metadata() or ()))


async def _reply(call: grpc.aio.UnaryUnaryCall, context: grpc.aio.ServicerContext, reply: Metadata) -> bytes:
    """:func:`_pipe` for a unary call: initial metadata, the response (returned, for grpc to send), trailers."""
    response = await call
    initial = _merge(_response(await call.initial_metadata() or ()), reply)
    if initial:
        await context.send_initial_metadata(initial)
    context.set_trailing_metadata(_response(await call.trailing_metadata() or ()))
    return response


def _failure(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one place where an exception becomes a gRPC status (code, message)."""
    if isinstance(exc, ServelaneError):
        return exc.grpc_code, exc.message
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "cancelled"
    return grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE


def _timed_out(limit: float | None) -> str:
    return f"request timed out after {limit:g}s"


def _time_left(deadline: float | None, client_left: float | None) -> float | None:
    """Seconds the upstream call may take: the sooner of our deadline and the client's, None when neither."""
    limits = [client_left] if client_left is not None else []
    if deadline is not None:
        limits.append(deadline - asyncio.get_running_loop().time())
    return max(min(limits), 0.0) if limits else None


def _transport(key: str) -> bool:
    return key.startswith(":") or key in _TRANSPORT


def _upstream(received: Iterable[tuple[str, str | bytes]], drop: frozenset[str]) -> Metadata:
    return tuple((key, value) for key, value in received if not _transport(key) and key not in drop)


def _response(metadata: Iterable[tuple[str, str | bytes]]) -> Metadata:
    return tuple((key, value) for key, value in metadata if not _transport(key))


def _merge(metadata: Metadata, reply: Metadata) -> Metadata:
    """``metadata`` with ``reply``'s entries added, replacing any of the same name."""
    if not reply:
        return metadata
    names = {key for key, _ in reply}
    return tuple((key, value) for key, value in metadata if key not in names) + reply


def text_metadata(received: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """The call's text metadata as headers for ``admit`` (repeated keys joined with ", "; ``-bin`` left out)."""
    headers: dict[str, str] = {}
    for key, value in received:
        if isinstance(value, str):
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
