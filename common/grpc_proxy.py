"""The gRPC (h2c) pass-through of the proxy core: any method, any kind, raw bytes, one upstream.

Owns a grpc.aio server on its own port whose one generic handler accepts every method path, and one long-lived
channel to the upstream ``host:port`` (made in :meth:`GrpcProxy.start`, closed in :meth:`GrpcProxy.stop`).
Messages are never decoded: no serializers on either side, so bytes go through as they came. Every call is
handled as stream-stream on both sides; on the wire a unary call is the same HTTP/2 exchange (headers, framed
messages, trailers) as a streaming one, so one handler carries all four kinds.

One call, top to bottom::

    admit(metadata)            the caller's gate (breaker, stats, metrics); wraps everything below
    upstream call              deadline: what is left of ``timeout`` and of the client's own deadline
    relay                      initial metadata, each message, trailing metadata, status code and details

Metadata goes upstream minus what gRPC writes itself and the names the caller asks to ``drop`` (the queue-proxy
drops Knative's routing headers, ``k-original-host`` among them: grpc python cannot set ``:authority`` per call;
a gateway, which adds those headers, drops nothing).

Errors become a gRPC status in one place, :func:`_failure`::

    ServelaneError from admit       its grpc_code and message (QueueFull: UNAVAILABLE "pending request queue full")
    upstream unreachable            UpstreamError: UNAVAILABLE "upstream unreachable: ..."
    ``timeout`` spent (queue+call)  UpstreamTimeout: DEADLINE_EXCEEDED, the upstream call cancelled
    a status the upstream sent      relayed as it came, with its trailing metadata (not an error here)
    anything else                   logged with its traceback; INTERNAL "Internal server error"

A client that cancels cancels the upstream call. :meth:`GrpcProxy.stop` refuses new calls at once and gives the
ones in flight ``grace`` seconds before they are cancelled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass

import grpc

from common.errors import ServelaneError, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]

# Entries gRPC writes itself (in either direction): a copy would clash with them or be ignored.
_TRANSPORT = frozenset(
    {
        "user-agent",
        "content-type",
        "te",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "grpc-status",
        "grpc-message",
    }
)
# What grpc core says when it made up the status itself, on this side of the upstream connection.
_CONNECT_FAILED = "failed to connect to all addresses"
_LOCAL_DEADLINE = "Deadline Exceeded"
_INTERNAL_MESSAGE = "Internal server error"


@dataclass(slots=True)
class CallOutcome:
    """The final status of one proxied call; the proxy sets ``code`` before the admitter's context exits."""

    code: grpc.StatusCode = grpc.StatusCode.OK


Admit = Callable[[dict[str, str]], AbstractAsyncContextManager[CallOutcome]]


def build_grpc_proxy(
    upstream: str, *, admit: Admit, timeout: float | None, max_message_bytes: int, drop: frozenset[str] = frozenset()
) -> GrpcProxy:
    """A proxy to ``upstream`` (``host:port``) gated by ``admit``; ``timeout`` is total seconds, None for none;
    ``drop``: lower-case metadata names never sent upstream."""
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be > 0 seconds (or None for no limit)")
    if max_message_bytes <= 0:
        raise ValueError("max_message_bytes must be > 0")
    return GrpcProxy(upstream, admit, timeout, max_message_bytes, drop)


class GrpcProxy:
    def __init__(
        self, upstream: str, admit: Admit, timeout: float | None, max_message_bytes: int, drop: frozenset[str]
    ) -> None:
        self.upstream = upstream
        self._drop = drop
        self._admit = admit
        self._timeout = timeout
        self._options = (
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        )
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        return f"<GrpcProxy upstream={self.upstream} timeout={self._timeout} {state}>"

    async def start(self, host: str, port: int) -> int:
        """Open the upstream channel and listen on host:port without TLS (0 picks a free port); the port bound."""
        self._channel = grpc.aio.insecure_channel(self.upstream, options=self._options)
        # gRPC sets SO_REUSEPORT by default, which lets a second server bind a port in use without an error.
        server = grpc.aio.server(options=(*self._options, ("grpc.so_reuseport", 0)))
        server.add_generic_rpc_handlers((_AnyMethod(self._call),))
        try:
            bound = server.add_insecure_port(_address(host, port))
            await server.start()
        except BaseException:
            await self._channel.close()
            self._channel = None
            raise
        self._server = server
        return bound

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let those in flight finish within ``grace`` seconds, then close the channel."""
        server, channel = self._server, self._channel
        self._server = self._channel = None
        if server is not None:
            await server.stop(grace)
        if channel is not None:
            await channel.close()

    async def _call(self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        try:
            await self._admit_and_relay(method, requests, context)
        except Exception as exc:
            if not isinstance(exc, ServelaneError):
                log.error("unhandled error in the gRPC proxy", exc_info=exc)
            await context.abort(*_failure(exc))

    async def _admit_and_relay(
        self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        received: Metadata = tuple(context.invocation_metadata() or ())
        deadline = None if self._timeout is None else asyncio.get_running_loop().time() + self._timeout
        async with AsyncExitStack() as stack:
            outcome = await self._admitted(stack, received, deadline)
            try:
                outcome.code = await self._relay(method, requests, context, received, deadline)
            except BaseException as exc:
                outcome.code = _failure(exc)[0]
                raise

    async def _admitted(self, stack: AsyncExitStack, received: Metadata, deadline: float | None) -> CallOutcome:
        """Enter ``admit`` on ``stack``; waiting for admission counts against ``timeout``."""
        try:
            async with asyncio.timeout_at(deadline):
                return await stack.enter_async_context(self._admit(_text(received)))
        except TimeoutError:
            raise self._timed_out() from None

    async def _relay(
        self,
        method: str,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
        received: Metadata,
        deadline: float | None,
    ) -> grpc.StatusCode:
        """Forward one call upstream and relay everything that comes back; the final status code."""
        assert self._channel is not None, "GrpcProxy.start() opens the channel before any call arrives"
        timeout = _time_left(deadline, context.time_remaining())
        call = self._channel.stream_stream(method)(requests, metadata=_upstream(received, self._drop), timeout=timeout)
        try:
            await _pipe(call, context)
        except grpc.aio.AioRpcError as err:
            return self._relay_status(err, context)
        finally:
            call.cancel()  # a no-op once the call is done; otherwise (cancelled, failed) the upstream must stop too
        return grpc.StatusCode.OK

    def _relay_status(self, err: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
        """Relay a non-OK status the upstream sent; raise the translation of one grpc made up on this side."""
        code, details = err.code(), err.details() or ""
        if code is grpc.StatusCode.UNAVAILABLE and details.startswith(_CONNECT_FAILED):
            reason = "connection refused" if "Connection refused" in details else "cannot connect"
            raise UpstreamError(f"upstream unreachable: {reason}")
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and details == _LOCAL_DEADLINE and self._timeout is not None:
            raise self._timed_out()
        context.set_trailing_metadata(_response(err.trailing_metadata() or ()))
        context.set_code(code)
        context.set_details(details)
        return code

    def _timed_out(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"request timed out after {self._timeout:g}s")


class _AnyMethod(grpc.GenericRpcHandler):
    """Serves every method path with the same stream-stream behaviour, bound to the path."""

    def __init__(self, call: Callable[..., object]) -> None:
        self._call = call

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.stream_stream_rpc_method_handler(functools.partial(self._call, handler_call_details.method))


async def _pipe(call: grpc.aio.StreamStreamCall, context: grpc.aio.ServicerContext) -> None:
    """Relay initial metadata, then each message, then trailing metadata; an upstream error raises AioRpcError."""
    initial = _response(await call.initial_metadata() or ())
    if initial:  # otherwise gRPC sends none, or a trailers-only answer, just as the upstream did
        await context.send_initial_metadata(initial)
    async for message in call:
        await context.write(message)
    context.set_trailing_metadata(_response(await call.trailing_metadata() or ()))


def _failure(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one place where an exception becomes a gRPC status (code, message)."""
    if isinstance(exc, ServelaneError):
        return exc.grpc_code, exc.message
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "cancelled"
    return grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE


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


def _text(received: Metadata) -> dict[str, str]:
    """The call's text metadata as headers for ``admit`` (repeated keys joined with ", "; ``-bin`` left out)."""
    headers: dict[str, str] = {}
    for key, value in received:
        if isinstance(value, str):
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
