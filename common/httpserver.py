"""A lean HTTP/1.1 server: asyncio protocol, httptools' C parser, one write per small response.

Why not aiohttp's server: the queue-proxy and the gateway do little per request (a header pass, a gate, a
forward), and aiohttp's per-request machinery (request and response objects, payload writers, the router) was
most of their CPU; the model server's REST edge gained too. This server keeps only what those need. It serves
every port of the queue-proxy and the gateway, and the model server's REST port; aiohttp is left to the
controller's admin API and to clients.

One connection, one request at a time (pipelined requests wait their turn, in order)::

    head parsed     a :class:`Request`; a body of known length up to ``buffer_limit`` is read whole before the
                    handler runs (``request.body``), a larger or chunked one streams (``request.stream``, with
                    flow control: reading pauses while more than HIGH_WATER bytes wait for the handler)
    handler         ``await handler(request)`` returns a :class:`Response`, written in one piece; or it streams
                    with ``start_response`` / ``write`` / ``end_response`` and returns ``Response.streamed(status)``
                    or, first, ``fast(request)`` (when the server has one and the body was read whole): it may
                    take the request without a task, by callbacks, and hand back an :class:`Exchange` that ends
                    with ``request.reply(response)`` or ``request.finish()``; None leaves it to the handler
    after           keep-alive: the next request; else (or if the handler left the body unread) the socket closes

A client that goes away cancels its handler (the proxy cancels its upstream call), unless the server is made
with ``cancel_on_disconnect=False`` (the model server: what was accepted runs to its end). An error escaping the handler
is logged and answered 500 (or, once the response has started, the connection is cut). A malformed request gets
400, and a head over ``max_head_bytes`` 431, and the connection is closed. :meth:`HttpServer.stop` stops listening,
closes idle connections, lets requests in flight finish for ``grace`` seconds, then cuts the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol
from urllib.parse import unquote

import httptools
import orjson
from multidict import CIMultiDict

from common.upstream import WriteFlow

log = logging.getLogger(__name__)

HIGH_WATER = 1024 * 1024
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}
_SWEEP_SECONDS = 5.0
LINGER_SECONDS = 2.0


class Response:
    """A whole response; or, from :meth:`streamed`, the status of one the handler already wrote. ``local``: made
    here, so the server adds ``Date`` and ``Server``; a proxied answer (``local=False``) keeps the upstream's.
    ``block``: header lines already encoded (``b"Name: value\\r\\n"`` each), written before ``headers``."""

    __slots__ = ("status", "headers", "body", "sent", "local", "block")

    def __init__(
        self, status: int = 200, headers: Iterable[tuple[str, str]] = (), body: bytes = b"", *, local: bool = True,
        block: bytes = b"",
    ) -> None:  # fmt: skip
        self.status = status
        self.headers = list(headers)
        self.body = body
        self.sent = False
        self.local = local
        self.block = block

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes{' sent' if self.sent else ''}>"

    @classmethod
    def text(cls, text: str, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls(status, [("Content-Type", "text/plain; charset=utf-8"), *headers], text.encode())

    @classmethod
    def json(cls, value: object, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls(status, [("Content-Type", "application/json"), *headers], orjson.dumps(value))

    @classmethod
    def error(cls, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """servelane's error body, as common.http.error_response writes it: ``{"error": message}``."""
        return cls.json({"error": message}, status, headers)

    @classmethod
    def streamed(cls, status: int) -> Response:
        response = cls(status)
        response.sent = True
        return response


class BodyStream:
    """A request body as it arrives: ``async for chunk in stream.iter_any()`` (the upstream client's interface)."""

    __slots__ = ("_conn", "_chunks", "_buffered", "_done", "_error", "_waiter", "_continue")

    def __init__(self, conn: _Connection, expect_continue: bool) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._continue = expect_continue

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def end(self, error: BaseException | None = None) -> None:
        self._done = True
        self._error = error
        self._wake()

    @property
    def done(self) -> bool:
        return self._done and self._error is None

    async def iter_any(self) -> AsyncIterator[bytes]:
        if self._continue:  # the client waits for this before it sends the body
            self._continue = False
            self._conn.write(_CONTINUE)
        while True:
            while self._chunks:
                piece = self._chunks.popleft()
                self._buffered -= len(piece)
                if self._buffered <= HIGH_WATER // 2:
                    self._conn.resume_reading()
                yield piece
            if self._error is not None:
                raise self._error
            if self._done:
                return
            self._waiter = self._conn.loop.create_future()
            await self._waiter
            self._waiter = None

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.iter_any()])

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Request:
    """One request: its head, its body (``body`` when read whole, else ``stream``), and the response's writer."""

    __slots__ = ("method", "target", "raw_headers", "fields", "version", "keep_alive", "body", "stream",
                 "content_length", "complete", "_conn", "_started", "_chunked", "_head_only", "_buffer",
                 "_headers")  # fmt: skip

    def __init__(
        self, conn: _Connection, method: str, target: str, raw_headers: list[tuple[bytes, bytes]], version: str,
        fields: dict[bytes, bytes] | None = None,
    ) -> None:  # fmt: skip
        self._conn = conn
        self.method = method
        self.target = target  # as sent: path and query, still percent-encoded
        self.raw_headers = raw_headers  # the header fields as they came, undecoded
        # lower-case name → the first value, undecoded: what a hop looks up (made once, as the head is parsed)
        self.fields = _first_values(raw_headers) if fields is None else fields
        self._headers: CIMultiDict[str] | None = None
        self.version = version
        self.keep_alive = True
        self.body: bytes | None = None
        self.stream: BodyStream | None = None
        self.content_length: int | None = None
        self.complete = False  # the whole message (body included) has been read from the socket
        self._started = False
        self._chunked = False
        self._head_only = method == "HEAD"
        self._buffer: list[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target}>"

    @property
    def path(self) -> str:
        """The path, percent-decoded (for routing); ``target`` is what goes upstream, as sent."""
        path = self.target.partition("?")[0]
        return unquote(path) if "%" in path else path

    @property
    def headers(self) -> CIMultiDict[str]:
        """The header fields, decoded, made on first use (a proxy hop reads :meth:`header` and ``raw_headers``)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = CIMultiDict(
                [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self.raw_headers]
            )
        return headers

    def header(self, name: bytes) -> str | None:
        """The first field called ``name`` (lower-case), without decoding the others."""
        value = self.fields.get(name)
        return None if value is None else value.decode("latin-1")

    @property
    def host(self) -> str:
        return self.header(b"host") or ""

    @property
    def remote(self) -> str:
        return self._conn.remote

    @property
    def scheme(self) -> str:
        return "http"

    @property
    def response_started(self) -> bool:
        return self._started

    # -- writing a response in pieces --------------------------------------------------------------------------
    def start_response(
        self, status: int, headers: Iterable[tuple[str, str]], length: int | None = None, *, block: bytes = b""
    ) -> None:
        """Write the head (``block``: more header lines, encoded); the body follows with :meth:`write` (chunked
        when ``length`` is None)."""
        self._started = True
        framing = []
        if self._head_only or status in (204, 304):
            pass
        elif length is not None:
            framing.append(("Content-Length", str(length)))
        else:
            self._chunked = True
            framing.append(("Transfer-Encoding", "chunked"))
        self.keep_alive = self._conn.reusable(self)
        self._conn.write(self._conn.head(status, headers, framing, self.keep_alive, block=block))

    async def write(self, data: bytes) -> None:
        if not data or self._head_only:
            return
        self._conn.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        await self._conn.drained()

    async def end_response(self) -> None:
        if self._chunked and not self._head_only:
            self._conn.write(b"0\r\n\r\n")
        await self._conn.drained()

    def abort(self) -> None:
        """Cut the connection: a response that broke off after it started reaches the client as truncated."""
        self._conn.abort()

    # -- ending a request a fast handler took --------------------------------------------------------------------
    def reply(self, response: Response) -> None:
        """Write ``response`` (unless it was streamed already) and end the request: the next one may start."""
        self._conn.respond(self, response)
        self._conn._finished(self)

    def reply_proxied(self, status: int, block: bytes, body: bytes) -> None:
        """:meth:`reply` with an upstream's whole answer, given as its parts (``block``: its header lines, encoded):
        what a relay writes for nearly every request, without a :class:`Response` in between."""
        conn = self._conn
        conn.write(conn.proxied(self, status, block, body))
        conn._finished(self)

    def finish(self) -> None:
        """End the request after its response went out some other way (streamed, or the connection was cut)."""
        self._conn._finished(self)


Handler = Callable[[Request], Awaitable[Response]]


class Exchange(Protocol):
    """A request a ``fast`` hook took: the connection asks whether it is over, and cancels it if the client leaves."""

    def done(self) -> bool: ...

    def cancel(self) -> bool: ...


FastHandler = Callable[[Request], "Exchange | None"]


def get_routes(routes: dict[str, Handler]) -> Handler:
    """A handler for a small port (admin, stats, metrics): GET (and HEAD) of these paths; 404 and 405 otherwise."""

    async def route(request: Request) -> Response:
        handler = routes.get(request.path)
        if handler is None:
            return Response.error(404, f"no such path: {request.path}")
        if request.method not in ("GET", "HEAD"):
            return Response.error(405, f"{request.method} is not allowed here", [("Allow", "GET, HEAD")])
        return await handler(request)

    return route


class HttpServer:
    def __init__(
        self, handler: Handler, *, buffer_limit: int = 256 * 1024, keepalive_timeout: float = 75.0,
        max_head_bytes: int = 64 * 1024, cancel_on_disconnect: bool = True, head_timeout: float = 30.0,
        fast: FastHandler | None = None,
    ) -> None:  # fmt: skip
        self.handler = handler
        self.fast = fast
        self.head_timeout = head_timeout  # seconds a client may take to send a request's head (then 408)
        # A client that goes away cancels its handler (a proxy then drops its upstream call); a model server
        # lets an accepted request run to its end instead, as work already handed to a model cannot be taken back.
        self.cancel_on_disconnect = cancel_on_disconnect
        self.buffer_limit = buffer_limit
        self.keepalive_timeout = keepalive_timeout
        self.max_head_bytes = max_head_bytes
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: set[_Connection] = set()
        self.closing = False
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._date = (0, b"")

    def __repr__(self) -> str:
        return f"<HttpServer connections={len(self.connections)} closing={self.closing}>"

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port."""
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(lambda: _Connection(self), host, port, backlog=1024)
        self._sweeper = self.loop.call_later(self._sweep_interval, self._sweep)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float) -> None:
        """Stop listening, close idle connections, give requests in flight ``grace`` seconds, cut the rest."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        busy = [c.finished for c in self.connections]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for conn in list(self.connections):
            conn.abort()

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date[0]:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]

    @property
    def _sweep_interval(self) -> float:
        return min(_SWEEP_SECONDS, self.keepalive_timeout / 2, self.head_timeout / 2)

    def _sweep(self) -> None:
        """Close keep-alive connections idle for longer than ``keepalive_timeout``, and answer 408 to clients
        that have been sending one request head for longer than ``head_timeout`` (a slow-header client would
        otherwise hold its connection for ever)."""
        assert self.loop is not None
        now = self.loop.time()
        for conn in list(self.connections):
            if conn.idle and conn.last_used < now - self.keepalive_timeout:
                conn.close()
            elif conn.head_started is not None and conn.head_started < now - self.head_timeout:
                conn.refuse(408, f"the request head did not arrive within {self.head_timeout:g} s")
        self._sweeper = self.loop.call_later(self._sweep_interval, self._sweep)


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop: asyncio.AbstractEventLoop = server.loop  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.current: Request | None = None  # being parsed
        self.pending: deque[Request] = deque()  # parsed, waiting for the one in the handler
        self.active: asyncio.Task[None] | Exchange | None = None
        self.finished: asyncio.Future[None] = self.loop.create_future()  # set when the connection is gone
        self.last_used = self.loop.time()
        self._url: list[bytes] = []
        self._raw: list[tuple[bytes, bytes]] = []
        self._fields: dict[bytes, bytes] = {}
        self._head_bytes = 0  # of the request head being read, counted per read (data_received)
        self._received = 0  # bytes in the read being parsed
        self._flow = WriteFlow(self.loop)
        self._reading_paused = False
        self._closed = False
        self._lingering = False
        self.head_started: float | None = None  # while a request head is arriving
        # common.proxy.upstream_headers's result for the last request, kept for the next (the same fields, mostly)
        self.upstream_fields: tuple[list[tuple[bytes, bytes]], frozenset[bytes], str | None, bytes] | None = None

    @property
    def idle(self) -> bool:
        return self.active is None and self.current is None and not self.pending

    # -- asyncio.Protocol --------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else ""
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._received = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.refuse(400, "protocol upgrades are not supported here")
        except httptools.HttpParserError as exc:  # our callbacks' exceptions come wrapped in it too
            if self._head_bytes > self.server.max_head_bytes:
                self.refuse(431, "request head too large")
            elif not self._closed:
                self.refuse(400, f"malformed request: {exc}")
            return
        if self.head_started is not None:  # a head goes on into the next read: count this one against its limit
            self._head_bytes += len(data)
            if self._head_bytes > self.server.max_head_bytes:
                self.refuse(431, "request head too large")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        self.server.connections.discard(self)
        if self.active is not None and not self.active.done() and self.server.cancel_on_disconnect:
            self.active.cancel()  # the client went away: so does its request
        for request in (self.current, *self.pending):
            if request is not None and request.stream is not None:
                request.stream.end(ConnectionResetError("the client closed the connection"))
        self.pending.clear()
        self._flow.fail(ConnectionResetError("the client closed the connection"))
        if not self.finished.done():
            self.finished.set_result(None)

    def pause_writing(self) -> None:
        self._flow.pause()

    def resume_writing(self) -> None:
        self._flow.resume()

    # -- httptools callbacks -----------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url, self._raw, self._fields, self._head_bytes = [], [], {}, 0
        self.head_started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name, value))
        self._fields.setdefault(name.lower(), value)  # each field's first value, by lower-case name

    def on_headers_complete(self) -> None:
        self.head_started = None
        # The head's size is checked per read, not per field: reads before this one that ended inside the head
        # were counted in data_received, and this read is at most len(data) more. Only when those could add up to
        # more than the limit is the head measured (its target and fields: as much as a client can make us keep).
        limit = self.server.max_head_bytes
        if self._head_bytes + self._received > limit:
            self._head_bytes = len(b"".join(self._url)) + sum(len(n) + len(v) for n, v in self._raw)
            if self._head_bytes > limit:
                raise ValueError("request head too large")
        parser = self.parser
        method = parser.get_method()
        raw, fields = self._raw, self._fields
        request = Request(
            self, _METHODS.get(method) or method.decode(), b"".join(self._url).decode("latin-1"), raw,
            parser.get_http_version(), fields,
        )  # fmt: skip
        request.keep_alive = parser.should_keep_alive() and not self.server.closing
        length = fields.get(b"content-length")  # the parser refuses a request with two
        chunked = b"transfer-encoding" in fields and any(
            b"chunked" in value.lower() for name, value in raw if name.lower() == b"transfer-encoding"
        )
        expect = b"expect" in fields and fields[b"expect"].lower() == b"100-continue"
        request.content_length = int(length) if length is not None and length.isdigit() else None
        self.current = request
        if not chunked and not request.content_length:
            return  # no body: dispatched when the message completes, at once
        if not chunked and request.content_length <= self.server.buffer_limit:  # type: ignore[operator]
            request._buffer = []
            if expect:
                self.write(_CONTINUE)
            return
        request.stream = BodyStream(self, expect)
        self._dispatch(request)

    def on_body(self, body: bytes) -> None:
        request = self.current
        if request is None or self._lingering:
            return
        if request.stream is not None:
            request.stream.feed(body)
        elif request._buffer is not None:
            request._buffer.append(body)

    def on_message_complete(self) -> None:
        request = self.current
        self.current = None
        if self._lingering:  # the rest of a body answered early has arrived: now the socket can close cleanly
            self.close()
            return
        if request is None:
            return
        request.complete = True
        if request.stream is not None:
            request.stream.end()
            return
        if request._buffer is not None:
            request.body = b"".join(request._buffer)
            request._buffer = None
        self._dispatch(request)

    # -- running requests, one at a time -----------------------------------------------------------------------
    def _dispatch(self, request: Request) -> None:
        if self.active is None:
            self._start(request)
        else:
            self.pending.append(request)
            if len(self.pending) > 16:  # a client pipelining far ahead waits
                self.pause_reading()

    def _start(self, request: Request) -> None:
        fast = self.server.fast
        if fast is not None and request.stream is None:
            exchange = fast(request)
            if exchange is not None:
                if not exchange.done():  # it may have ended at once, and started the next request already
                    self.active = exchange
                return
        self.active = self.loop.create_task(self._run(request))

    def respond(self, request: Request, response: Response) -> None:
        """Write a whole response in one piece: status line, fields, framing and body, built in one pass."""
        if response.sent:
            return
        lines = [f"{k}: {v}\r\n".encode("latin-1") for k, v in response.headers] if response.headers else []
        if not response.local:  # an upstream's answer: its own fields, as they came
            self.write(self.proxied(request, response.status, b"".join([response.block, *lines]), response.body))
            return
        request.keep_alive = keep = self.reusable(request)
        status, body = response.status, response.body
        parts = [b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Unknown")), response.block, *lines]
        if status >= 200 and status != 204 and status != 304:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        parts.append(b"Date: %b\r\nServer: servelane\r\n" % self.server.date())
        if not keep:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if not request._head_only:
            parts.append(body)
        self.write(b"".join(parts))

    def proxied(self, request: Request, status: int, block: bytes, body: bytes) -> bytes:
        """An upstream's whole answer as this connection writes it: its status and header lines, the length set
        again (a HEAD answer keeps the upstream's, in ``block``), ``Connection: close`` when this is the last."""
        request.keep_alive = keep = self.reusable(request)
        head_only = request._head_only
        bodiless = head_only or status < 200 or status == 204 or status == 304
        framing = b"" if bodiless else b"Content-Length: %d\r\n" % len(body)
        closing = b"" if keep else b"Connection: close\r\n"
        return b"HTTP/1.1 %d %b\r\n%b%b%b\r\n%b" % (
            status, _REASONS.get(status, b"Unknown"), block, framing, closing, b"" if head_only else body
        )  # fmt: skip

    async def _run(self, request: Request) -> None:
        try:
            self.respond(request, await self.server.handler(request))
        except asyncio.CancelledError:
            request.keep_alive = False
            raise
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            request.keep_alive = False
            if request.response_started:
                self.abort()
            else:
                self.respond(request, Response.error(500, "Internal server error"))  # keep_alive False: it closes
        finally:
            self._finished(request)

    def _finished(self, request: Request) -> None:
        self.active = None
        self.last_used = self.loop.time()
        if self._closed:
            return
        if not request.complete:
            self._linger()
            return
        if not request.keep_alive or self.server.closing:
            self.close()
            return
        if self.pending:
            self.resume_reading()
            self._start(self.pending.popleft())

    # -- writing -----------------------------------------------------------------------------------------------
    def head(
        self, status: int, headers: Iterable[tuple[str, str]], framing: list[tuple[str, str]], keep_alive: bool,
        *, local: bool = False, block: bytes = b"",
    ) -> bytes:  # fmt: skip
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Unknown")), block]
        lines += [f"{k}: {v}\r\n".encode("latin-1") for k, v in (*headers, *framing)]
        if local:
            lines.append(b"Date: %b\r\nServer: servelane\r\n" % self.server.date())
        if not keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    async def drained(self) -> None:
        await self._flow.drained()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self._closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self._closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def reusable(self, request: Request) -> bool:
        """Whether the connection stays open after this response: not if the client or the server is closing it,
        nor if the request's body has not all arrived (the rest is drained and the socket closed: say so)."""
        return request.keep_alive and request.complete and not self.server.closing

    def _linger(self) -> None:
        """The response went out before the request's body was all read (an early 413, say). Closing now would
        reset the connection and the client could lose the response; read and drop the rest of the body first,
        for at most LINGER_SECONDS, then close."""
        self._lingering = True
        self.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self.close)

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self._closed = True
            self.transport.abort()

    def refuse(self, status: int, message: str) -> None:
        response = Response.error(status, message)
        self.write(
            self.head(status, response.headers, [("Content-Length", str(len(response.body)))], False, local=True)
            + response.body
        )
        self.close()


def _first_values(raw: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Each field's first value by lower-case name (reversed: where a name repeats, the first one is stored last)."""
    return {name.lower(): value for name, value in reversed(raw)}

