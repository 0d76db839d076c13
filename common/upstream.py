"""A lean HTTP/1.1 client for the proxy hops: keep-alive connections to one upstream, httptools for parsing.

The proxy core needs far less than a general client (no redirects, cookies, auth, DNS or TLS), and on a hop that
answers thousands of requests a second the general client's per-request machinery was most of the hop's CPU.
Here a request is one ``write`` of the head (and body, when it is already in memory), and the response is parsed
by httptools' C parser as it arrives:

    pool.request(...)   an idle connection (or a new one) → write → await the response head
    response.read()     the whole body;  response.chunks(): the body as it arrives (streams, SSE)
    response.release()  back to the idle pool if the exchange completed and both sides keep it alive; else closed

or, without a coroutine, for the proxy core's relay (:class:`common.proxy.Relay`): ``conn.start(data, listener)``
on a connection from :meth:`UpstreamPool.take_idle` or :meth:`UpstreamPool.connect`, and the parser calls the
:class:`Listener` back with the head, the complete response, or the error (until the listener lets go of it by
setting ``conn.listener = None``; the response then works as above).

A request sent on a reused idle connection that the upstream had already closed is retried once on a new one,
when its body can be sent again. Flow control both ways: writes wait while the transport's buffer is full, and
reading pauses while more than ``HIGH_WATER`` bytes of body wait for the consumer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Protocol

import httptools

HIGH_WATER = 1024 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


class StreamedBody(Protocol):
    """A request body that arrives in pieces (common.httpserver.BodyStream; aiohttp's StreamReader fits too)."""

    def iter_any(self) -> AsyncIterator[bytes]: ...


class Listener(Protocol):
    """Who hears of an exchange started with :meth:`_Connection.start`, from the parser's callbacks."""

    def on_head(self, response: UpstreamResponse) -> None: ...

    def on_complete(self, response: UpstreamResponse) -> None: ...

    def on_error(self, exc: BaseException) -> None: ...


class WriteFlow:
    """A protocol's write flow control as something to await: asyncio calls ``pause_writing`` /
    ``resume_writing`` on the protocol, which hands them here; a writer awaits :meth:`drained` after each write.
    Shared by both ends of the proxy core (this client and common.httpserver)."""

    __slots__ = ("_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None

    def pause(self) -> None:
        self._waiter = self._loop.create_future()

    def resume(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._waiter = None

    def fail(self, exc: BaseException) -> None:
        """The connection is gone: a writer waiting for room gets ``exc``."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def drained(self) -> None:
        if self._waiter is not None:
            await self._waiter


class UpstreamClosed(ConnectionError):
    """The upstream closed the connection before the response was complete."""


class _Connection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop  # kept: on Python 3.11 every get_running_loop() is a getpid() system call
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.lost: BaseException | None = None
        self.used = False
        self.listener: Listener | None = None
        self._raw: list[tuple[bytes, bytes]] = []  # the fields of the response being parsed
        self._head: asyncio.Future[None] | None = None
        self._flow = WriteFlow(loop)

    # -- asyncio.Protocol ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamClosed(f"malformed response ({exc})"))
            self.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail(exc or UpstreamClosed("connection closed before the response was complete"))
        self._flow.fail(self.lost)  # type: ignore[arg-type]

    def pause_writing(self) -> None:
        self._flow.pause()

    def resume_writing(self) -> None:
        self._flow.resume()

    # -- httptools callbacks ---------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._raw = []  # the fields go straight into the response's list (a stray response's: into this one)
        if self.response is not None:
            self.response.raw = self._raw

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        if response is None:
            return
        response.status = self.parser.get_status_code()
        if response.status < 200:  # 1xx: an interim answer; the real head follows
            response.raw = self._raw = []
            return
        if response.head_only or response.status in _NO_BODY_STATUSES:
            response.complete = True
        if self.listener is not None:
            self.listener.on_head(response)
        elif self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None:
            response.feed(body)
            if response.buffered > HIGH_WATER and self.transport is not None:
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        response = self.response
        if response is not None and response.status >= 200:
            response.complete = True
            response.keep_alive = self.parser.should_keep_alive()
            listener, self.listener = self.listener, None
            if listener is not None:
                listener.on_complete(response)
            else:
                response.wake()

    # -- use -------------------------------------------------------------------------------------------------
    async def send(self, head: bytes, body: bytes | StreamedBody | None, chunked: bool) -> None:
        assert self.transport is not None
        if isinstance(body, bytes) or body is None:
            self.transport.write(head + body if body else head)
            return
        self.transport.write(head)
        async for piece in body.iter_any():
            if self.transport.is_closing():  # the upstream answered early (a 413, say) and closed: stop sending
                return
            self.transport.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
            await self._flow.drained()
        if chunked:
            self.transport.write(b"0\r\n\r\n")

    def start(self, data: bytes, listener: Listener, head_only: bool) -> UpstreamResponse:
        """Send a whole request (head and body in ``data``); ``listener`` hears of its response."""
        assert self.transport is not None
        self.used = True
        self.response = UpstreamResponse(self, head_only)
        self.listener = listener
        self.transport.write(data)
        return self.response

    async def exchange(self, head: bytes, body: bytes | StreamedBody | None, chunked: bool, head_only: bool):
        self.used = True
        self.response = UpstreamResponse(self, head_only)
        self._head = self.loop.create_future()
        await self.send(head, body, chunked)
        await self._head
        return self.response

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.on_error(exc)
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        if self.response is not None:
            self.response.wake()


class UpstreamResponse:
    """The response head at once; the body read whole or chunk by chunk, as the parser delivers it."""

    __slots__ = (
        "_conn",
        "head_only",
        "status",
        "raw",
        "complete",
        "keep_alive",
        "buffered",
        "_chunks",
        "_waiter",
        "_released",
    )

    def __init__(self, conn: _Connection, head_only: bool) -> None:
        self._conn = conn
        self.head_only = head_only
        self.status = 0
        self.raw: list[tuple[bytes, bytes]] = []  # the header fields as they came, undecoded
        self.complete = False
        self.keep_alive = False
        self.buffered = 0
        self._chunks: list[bytes] = []  # not a deque: a deque allocates a 64-slot block, per response
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for key, value in self.raw:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        self.wake()

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            while self._chunks:
                pieces, self._chunks = self._chunks, []  # what arrives meanwhile goes to the new list
                for piece in pieces:
                    self.buffered -= len(piece)
                    if self.buffered <= HIGH_WATER // 2:
                        self._conn.resume()
                    yield piece
            if self.complete:
                return
            if self._conn.lost is not None:
                raise self._conn.lost
            self._waiter = self._conn.loop.create_future()
            await self._waiter
            self._waiter = None

    async def read(self) -> bytes:
        if self.complete:  # the usual case for a small answer: every byte is already here
            return self.body()
        return b"".join([piece async for piece in self.chunks()])

    def body(self) -> bytes:
        """The whole body of a complete response."""
        data = b"".join(self._chunks)
        self._chunks = []
        self.buffered = 0
        return data

    def release(self) -> None:
        """Return the connection to the pool if this exchange completed cleanly; close it otherwise."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn.response = None
        if self.complete and self.keep_alive and not self.head_only and conn.lost is None:
            conn.pool.put(conn)
        else:
            conn.close()


class UpstreamPool:
    """Keep-alive connections to one ``host:port``; at most ``limit`` idle ones are kept."""

    def __init__(self, host: str, port: int, limit: int = 1000) -> None:
        self.host, self.port, self.limit = host, port, limit
        self._idle: deque[_Connection] = deque()

    def __repr__(self) -> str:
        return f"<UpstreamPool {self.host}:{self.port} idle={len(self._idle)}>"

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] | bytes,
        body: bytes | StreamedBody | None,
        length: int | None,
    ) -> UpstreamResponse:
        chunked = body is not None and not isinstance(body, bytes) and length is None
        head = _head(method, target, headers, body, length, chunked)
        head_only = method == "HEAD"
        conn = self.take_idle()
        if conn is not None:
            try:
                return await conn.exchange(head, body, chunked, head_only)
            except (ConnectionError, OSError):
                conn.close()
                if not isinstance(body, (bytes, type(None))):
                    raise  # a streamed body cannot be sent again
            except BaseException:  # cancelled (the client went away, a timeout): the exchange is lost with it
                conn.close()
                raise
        conn = await self.connect()
        try:
            return await conn.exchange(head, body, chunked, head_only)
        except BaseException:
            conn.close()
            raise

    def put(self, conn: _Connection) -> None:
        if len(self._idle) < self.limit and conn.transport is not None and not conn.transport.is_closing():
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def take_idle(self) -> _Connection | None:
        """An idle kept-alive connection, or None when there is none (then :meth:`connect`)."""
        while self._idle:
            conn = self._idle.pop()
            if conn.lost is None and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Connection(self, loop), self.host, self.port)
        return conn


def _head(
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] | bytes,
    body: bytes | StreamedBody | None,
    length: int | None,
    chunked: bool,
) -> bytes:
    """The request head: ``headers`` as (name, value) pairs, or as header lines already encoded."""
    if isinstance(body, bytes):
        framing = b"Content-Length: %d\r\n" % len(body)
    elif chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
    elif body is not None:
        framing = b"Content-Length: %d\r\n" % (length or 0)
    else:
        framing = b""
    if not isinstance(headers, bytes):
        headers = "".join([f"{name}: {value}\r\n" for name, value in headers]).encode("latin-1")
    return b"%b %b HTTP/1.1\r\n%b%b\r\n" % (method.encode(), target.encode("latin-1"), headers, framing)
