"""The streaming HTTP reverse proxy every servelane hop shares (queue-proxy, gateway, activator).

One :class:`ProxyClient` per process holds the keep-alive connection pools (:mod:`common.upstream`).
:meth:`ProxyClient.forward` sends a request taken by :mod:`common.httpserver` to an upstream and streams the
answer back:

- request bodies stream to the upstream (small ones, whose length is known and under ``buffer_limit``, are read
  whole first: cheaper, and still bounded); responses stream back chunk by chunk (chunked and server-sent events
  arrive as the upstream writes them), except small ones with a known length;
- hop-by-hop headers are dropped both ways; ``X-Forwarded-For/Proto/Host`` are set and a ``Forwarded`` header is
  synthesised from them when the request has none (Knative's shim); trace and request-id headers pass through;
- each hop appends ``<hop>;dur=<ms>`` (time from receiving the request to the upstream's headers) and any extra
  entries the caller gives (such as its queue wait) to ``Server-Timing``;
- upstream failures are translated once, here: connection refused or reset → :class:`UpstreamError` (502),
  a timeout before the response starts → :class:`UpstreamTimeout` (504). A timeout after the response has started
  cannot change the status any more: the client connection is aborted, so the client sees a truncated response.

Timeouts (:class:`Timeouts`): ``total`` bounds the whole exchange, ``response_start`` the wait for the upstream's
headers, ``idle`` the gap between body chunks; each cancels the upstream call when it fires. A relay's deadlines are
checked by one sweep every SWEEP_SECONDS (:class:`Deadlines`), so its timeout fires up to that much late.

:meth:`ProxyClient.relay` is the same exchange for a request whose body was read whole, run by callbacks instead
of a task (a server's ``fast`` hook): the request goes out from the parser's callback that completed it, and the
answer is written from the upstream parser's callback that completed it. Most requests to a hop are small, and
at low concurrency the task, the coroutines and the future a coroutine exchange needs were a large share of the
hop's latency. A response that streams (chunked, server-sent events, or over ``buffer_limit``) is handed to a
task when its head arrives, and goes on exactly as in :meth:`forward`; so do the rules above.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.errors import ServelaneError, UpstreamError, UpstreamTimeout
from common.httpserver import Request, Response
from common.upstream import UpstreamPool, UpstreamResponse, _Connection, _head

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
TIMEOUT_MESSAGE = "request timeout"
SWEEP_SECONDS = 0.05  # how often the relays' deadlines are checked: a relay's timeout fires at most this late
_SKIP_OUT_RAW = frozenset(name.encode() for name in HOP_BY_HOP | {"content-length", "expect"})  # framed again
_SKIP_BACK_RAW = frozenset(name.encode() for name in HOP_BY_HOP | {"content-length", "server-timing"})
# a client's own forwarding fields (besides X-Forwarded-For): with any of them, upstream_headers extends them
_FORWARDING_IN = frozenset({b"forwarded", b"x-forwarded-proto", b"x-forwarded-host"})
_HOST_CACHED = 255  # bytes: a longer Host (no DNS name is) is not kept, so the cache stays small whatever clients send


@dataclass(frozen=True, slots=True)
class Timeouts:
    total: float | None = None
    response_start: float | None = None
    idle: float | None = None


class ProxyClient:
    """The process's upstream client: keep-alive connection pools (:mod:`common.upstream`), one per upstream."""

    def __init__(self, hop: str, *, limit: int = 1000, buffer_limit: int = 256 * 1024):
        self.hop = hop
        self.buffer_limit = buffer_limit
        self._limit = limit
        self._pools: dict[str, UpstreamPool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # kept: get_running_loop() is a syscall on 3.11
        self._deadlines: Deadlines | None = None

    def __repr__(self) -> str:
        return f"<ProxyClient {self.hop} pools={list(self._pools)}>"

    async def start(self) -> None:
        """Nothing to open ahead of time: connections are made on first use and kept alive."""
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        if self._deadlines is not None:
            self._deadlines.close()

    def deadlines(self, loop: asyncio.AbstractEventLoop) -> Deadlines:
        if self._deadlines is None:
            self._deadlines = Deadlines(loop)
        return self._deadlines

    def _pool(self, upstream: str) -> UpstreamPool:
        pool = self._pools.get(upstream)
        if pool is None:
            parts = urlsplit(upstream)
            pool = self._pools[upstream] = UpstreamPool(parts.hostname or "127.0.0.1", parts.port or 80, self._limit)
        return pool

    async def forward(
        self,
        request: Request,
        upstream: str,
        *,
        headers: bytes | None = None,
        timeouts: Timeouts = Timeouts(),
        started: float | None = None,
        timings: Mapping[str, float] | None = None,
        reply_headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Proxy ``request`` to ``upstream`` (``http://host:port``), keeping its path and query; the answer is a
        whole :class:`Response` when it is small, else it was streamed to the client (``Response.streamed``).

        ``headers`` are the headers to send (default: :func:`upstream_headers` of the request); ``started`` is
        when this hop received the request (``time.perf_counter()``), for Server-Timing and the total timeout;
        ``reply_headers`` are set on the response, replacing any the upstream sent under the same names.
        """
        started = time.perf_counter() if started is None else started
        loop = self._loop or asyncio.get_running_loop()
        deadline = _Deadline(loop, timeouts, loop.time() - (time.perf_counter() - started))
        outgoing = upstream_headers(request) if headers is None else headers
        answer: UpstreamResponse | None = None
        try:
            with deadline:  # a plain context manager: entering and leaving it awaits nothing
                body = request.body if request.stream is None else request.stream
                answer = await self._pool(upstream).request(
                    request.method, request.target, outgoing, body, request.content_length
                )
                deadline.response_started()
                timing = _hop_timing(self.hop, started, timings)
                block, size, stream = response_head(answer.raw, timing, reply_headers, head_only=answer.head_only)
                if answer.complete or (size is not None and size <= self.buffer_limit and not stream):
                    return Response(answer.status, (), await answer.read(), local=False, block=block)
                await _stream(request, answer, block, size, deadline)
                return Response.streamed(answer.status)
        except TimeoutError:
            if not request.response_started:
                raise UpstreamTimeout(TIMEOUT_MESSAGE) from None
        except OSError as exc:  # refused, reset, or closed before the response was complete
            if not request.response_started:
                raise _unreachable(upstream, exc) from None
        finally:
            if answer is not None:
                answer.release()
        request.abort()  # the response had started: it cannot get an error status any more
        return Response.streamed(answer.status if answer is not None else 502)


    def relay(
        self,
        request: Request,
        upstream: str,
        *,
        headers: bytes,
        on_done: Callable[[int], None],
        timeouts: Timeouts = Timeouts(),
        started: float | None = None,
        timings: Mapping[str, float] | None = None,
        reply_headers: Mapping[str, str] | None = None,
    ) -> Relay:
        """:meth:`forward` without a task, for a request whose body was read whole (``request.stream`` is None):
        the exchange starts now, and ends by replying on the request; ``on_done(status)`` is called once, then
        (499 when the client went away first). The arguments mean what they mean for :meth:`forward`."""
        assert request.stream is None, "relay() takes whole bodies; a streamed one goes through forward()"
        relay = Relay(self, request, upstream, headers, timeouts, started, timings, reply_headers, on_done)
        relay.begin()
        return relay


async def _stream(request: Request, answer: UpstreamResponse, block: bytes, size: int | None,
                  deadline: _Deadline) -> None:  # fmt: skip
    request.start_response(answer.status, (), size, block=block)
    async for chunk in answer.chunks():
        await request.write(chunk)
        deadline.wrote()
    await request.end_response()


class Deadlines:
    """The deadlines of a client's relays in flight, all on one timer that sweeps every SWEEP_SECONDS while any is
    set. A timer per request (``call_at``, then ``cancel`` when the answer came in time, as nearly all do) cost
    about as much as the rest of a relay's bookkeeping together; here setting and clearing a deadline is a dict
    store. The price: a timeout fires up to SWEEP_SECONDS late."""

    __slots__ = ("_loop", "_due", "_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: dict[Relay, float] = {}
        self._handle: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Deadlines {len(self._due)} set>"

    def set(self, relay: Relay, when: float) -> None:
        self._due[relay] = when
        if self._handle is None:
            self._handle = self._loop.call_later(SWEEP_SECONDS, self._sweep)

    def clear(self, relay: Relay) -> None:
        self._due.pop(relay, None)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sweep(self) -> None:
        now = self._loop.time()
        expired = [relay for relay, when in self._due.items() if when <= now]
        for relay in expired:
            del self._due[relay]
            relay.expire()  # may start the connection's next request, and set its deadline: the sweep goes on
        self._handle = self._loop.call_later(SWEEP_SECONDS, self._sweep) if self._due else None


class Relay:
    """One exchange of :meth:`ProxyClient.relay`: an :class:`common.upstream.Listener` for the upstream
    connection and an :class:`common.httpserver.Exchange` for the server's."""

    __slots__ = ("_client", "_request", "_upstream", "_headers", "_timeouts", "_started", "_timings",
                 "_reply_headers", "_on_done", "_loop", "_conn", "_answer", "_deadlines", "_armed", "_t0", "_end",
                 "_task", "_done", "_reused", "_block", "_streaming")  # fmt: skip

    def __init__(
        self, client: ProxyClient, request: Request, upstream: str, headers: bytes,
        timeouts: Timeouts, started: float | None, timings: Mapping[str, float] | None,
        reply_headers: Mapping[str, str] | None, on_done: Callable[[int], None],
    ) -> None:  # fmt: skip
        self._client, self._request, self._upstream, self._headers = client, request, upstream, headers
        self._timeouts, self._timings, self._reply_headers, self._on_done = timeouts, timings, reply_headers, on_done
        self._loop = loop = client._loop or asyncio.get_running_loop()
        now = time.perf_counter()
        self._started = now if started is None else started
        self._t0 = loop.time() - (now - self._started)  # when the request arrived, on the loop's clock
        self._end = None if timeouts.total is None else self._t0 + timeouts.total
        self._conn: _Connection | None = None
        self._answer: UpstreamResponse | None = None
        self._deadlines = client.deadlines(loop)
        self._armed = False
        self._task: asyncio.Task[None] | None = None  # connecting, or streaming the response
        self._done = False
        self._reused = False
        self._block: bytes | None = None  # the response's header lines, once the upstream's head is in
        self._streaming = False

    def __repr__(self) -> str:
        return f"<Relay {self._request.method} {self._upstream}{self._request.target} done={self._done}>"

    # -- the server's Exchange ---------------------------------------------------------------------------------
    def done(self) -> bool:
        return self._done

    def cancel(self) -> bool:
        """The client went away: the upstream call is dropped (its connection closed) and the outcome is 499."""
        if self._done:
            return False
        if self._streaming:
            assert self._task is not None
            return self._task.cancel()  # the streaming task ends the exchange
        self._stop_upstream()
        self._done = True
        self._request.finish()
        self._on_done(499)
        return True

    # -- sending -----------------------------------------------------------------------------------------------
    def begin(self) -> None:
        timeouts = self._timeouts
        self._arm(timeouts.response_start if timeouts.response_start is not None else timeouts.idle)  # as _Deadline
        conn = self._client._pool(self._upstream).take_idle()
        if conn is None:
            self._task = self._loop.create_task(self._connect())
        else:
            self._reused = True
            self._send(conn)

    async def _connect(self) -> None:
        try:
            conn = await self._client._pool(self._upstream).connect()
        except OSError as exc:
            self._task = None
            self._fail(_unreachable(self._upstream, exc))
            return
        self._task = None
        self._send(conn)

    def _send(self, conn: _Connection) -> None:
        request = self._request
        body = request.body
        head = _head(request.method, request.target, self._headers, body, request.content_length, False)
        self._conn = conn
        self._answer = conn.start(head + body if body else head, self, request.method == "HEAD")

    # -- the upstream's Listener -------------------------------------------------------------------------------
    def on_head(self, answer: UpstreamResponse) -> None:
        timing = _hop_timing(self._client.hop, self._started, self._timings)
        self._block, size, stream = response_head(answer.raw, timing, self._reply_headers, head_only=answer.head_only)
        timeouts = self._timeouts
        if timeouts.response_start is not None or timeouts.idle is not None:
            self._arm(timeouts.idle)
        assert self._conn is not None
        if answer.head_only:  # the answer to HEAD is all head, whatever length it announces: done now
            self._conn.listener = None
            self.on_complete(answer)
            return
        if answer.complete or (size is not None and size <= self._client.buffer_limit and not stream):
            return  # small: on_complete writes it whole
        self._conn.listener = None  # the body streams, from a task, as forward() streams it
        self._disarm()
        self._streaming = True
        self._task = self._loop.create_task(self._stream(answer, size))

    def on_complete(self, answer: UpstreamResponse) -> None:
        self._disarm()
        status, body = answer.status, answer.body()
        answer.release()
        self._done = True
        self._request.reply_proxied(status, self._block or b"", body)
        self._on_done(status)

    def on_error(self, exc: BaseException) -> None:
        if self._answer is not None:
            self._answer.release()  # not complete: the connection is closed
        self._conn = self._answer = None
        if self._reused and self._block is None and isinstance(exc, OSError):
            # a kept-alive connection the upstream had closed: once more, on a new one (as UpstreamPool.request),
            # under the same timer
            self._reused = False
            self._task = self._loop.create_task(self._connect())
            return
        self._disarm()
        self._fail(_unreachable(self._upstream, exc))

    # -- the timer and the end -----------------------------------------------------------------------------------
    def _arm(self, stage: float | None) -> None:
        when = _earliest(self._end, self._loop, stage)
        if when is not None:
            self._deadlines.set(self, when)
            self._armed = True
        else:
            self._disarm()

    def _disarm(self) -> None:
        if self._armed:
            self._deadlines.clear(self)
            self._armed = False

    def expire(self) -> None:
        """Its deadline passed (:class:`Deadlines`): the upstream call is dropped, and the client gets 504."""
        self._armed = False
        if self._done or self._streaming:
            return
        self._stop_upstream()
        self._fail(UpstreamTimeout(TIMEOUT_MESSAGE))

    def _stop_upstream(self) -> None:
        """Drop the upstream call: the connection (or the attempt to make one) goes, the timer too."""
        self._disarm()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._conn is not None:
            self._conn.listener = None
        if self._answer is not None:
            self._answer.release()  # not complete: closed
        self._conn = self._answer = None

    def _fail(self, error: ServelaneError) -> None:
        """This hop's own error answer: the body every hop gives, with the headers this hop sets on every response
        (the gateway's ``X-Request-Id``)."""
        extra = self._reply_headers.items() if self._reply_headers else ()
        self._reply(Response.error(error.http_status, error.message, extra))

    def _reply(self, response: Response) -> None:
        self._disarm()
        self._done = True
        self._request.reply(response)
        self._on_done(response.status)

    async def _stream(self, answer: UpstreamResponse, size: int | None) -> None:
        request = self._request
        status = answer.status
        deadline = _Deadline(self._loop, self._timeouts, self._t0)
        try:
            with deadline:
                deadline.response_started()
                await _stream(request, answer, self._block or b"", size, deadline)
        except (TimeoutError, OSError):
            request.abort()  # the response had started: it cannot get an error status any more
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            answer.release()
            self._done = True
            request.finish()
            self._on_done(status)


class _Deadline:
    """The exchange's one timer, moved as the exchange goes on; ``asyncio.timeout``'s semantics (the task is
    cancelled, and the cancellation leaves the scope as ``TimeoutError``) without its per-use ``current_task()``
    lookup, which on Python 3.11 costs a system call."""

    __slots__ = ("_loop", "_timeouts", "_end", "_task", "_cancelling", "_handle", "_expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeouts: Timeouts, start: float) -> None:
        self._loop = loop
        self._timeouts = timeouts
        self._end = None if timeouts.total is None else start + timeouts.total
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False

    def __enter__(self) -> _Deadline:
        task = self._task = asyncio.current_task(self._loop)
        assert task is not None
        self._cancelling = task.cancelling()
        first = [t for t in (self._timeouts.response_start, self._timeouts.idle) if t is not None]
        self._arm(self._next(min(first) if first else None))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._expired and self._task is not None:
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def response_started(self) -> None:
        if self._timeouts.idle is not None or self._timeouts.response_start is not None:
            self._arm(self._next(self._timeouts.idle))

    def wrote(self) -> None:
        if self._timeouts.idle is not None:
            self._arm(self._next(self._timeouts.idle))

    def _arm(self, when: float | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None if when is None or self._expired else self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._handle = None
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    def _next(self, stage: float | None) -> float | None:
        return _earliest(self._end, self._loop, stage)


def _earliest(end: float | None, loop: asyncio.AbstractEventLoop, stage: float | None) -> float | None:
    """When an exchange's timer should fire: at ``end`` (the total timeout) or ``stage`` seconds from now, whichever
    comes first; None when neither is set."""
    if stage is None:
        return end
    until = loop.time() + stage
    return until if end is None or until < end else end


def upstream_headers(
    request: Request, *, drop: frozenset[bytes] = frozenset(), host: str | None = None
) -> bytes:
    """The request's header fields as an upstream should get them, encoded, in one pass over the undecoded ones:
    hop-by-hop fields and body framing gone (the client frames the body), with those the Connection header names;
    ``drop`` (lower-case names) gone; Host replaced by ``host`` if given; X-Forwarded-* set and a Forwarded header
    synthesised from them when the request has none.

    A client on a kept-alive connection mostly sends the same fields with every request; the result for the
    connection's last request is kept on the connection, and given again when this request's fields, ``drop``
    and ``host`` are the same (everything else it depends on, the peer and the scheme, is the connection's)."""
    raw, conn = request.raw_headers, request._conn
    last = conn.upstream_fields
    if last is not None and last[0] == raw and last[1] == drop and last[2] == host:
        return last[3]
    block = _upstream_headers(request, drop, host)
    conn.upstream_fields = (raw, drop, host, block)
    return block


def _upstream_headers(request: Request, drop: frozenset[bytes], host: str | None) -> bytes:
    fields = request.fields
    special = _special_out(drop)  # every name that is not passed on as it came: one set lookup for most fields
    connection = fields.get(b"connection")
    if connection is not None:
        special = special | _connection_tokens(connection)
    lines: list[bytes] = []
    chain: list[bytes] = []  # every X-Forwarded-For value, in order
    for name, value in request.raw_headers:
        lower = name.lower()
        if lower in special:
            if lower == b"x-forwarded-for":
                chain.append(value)
            elif lower == b"host":
                lines.append(b"%b: %b\r\n" % (name, host.encode("latin-1") if host else value))
            continue
        lines.append(b"%b: %b\r\n" % (name, value))
    remote, scheme = request.remote or "", request.scheme
    own_host = fields.get(b"host", b"")
    if not chain and connection is None and fields.keys().isdisjoint(_FORWARDING_IN):
        # nearly every request: no forwarding fields of the client's to extend, so the lines depend on the
        # connection and the Host alone
        make = _own_forwarding if len(own_host) <= _HOST_CACHED else _own_forwarding.__wrapped__
        lines.append(make(remote, scheme, own_host))
        return b"".join(lines)
    # the client's forwarding fields count unless the Connection header (or ``drop``) took them out
    forwarded_proto = None if b"x-forwarded-proto" in special else fields.get(b"x-forwarded-proto")
    forwarded_host = None if b"x-forwarded-host" in special else fields.get(b"x-forwarded-host")
    if b"forwarded" not in fields or b"forwarded" in special:
        synthesised = forwarded(
            chain[0].decode("latin-1") if chain else "", remote, scheme, own_host.decode("latin-1"),
            _decoded(forwarded_host), _decoded(forwarded_proto),
        )  # fmt: skip
        lines.append(b"Forwarded: %b\r\n" % synthesised.encode("latin-1"))
    encoded = remote.encode("latin-1")
    lines.append(b"X-Forwarded-For: %b\r\n" % (b", ".join([*chain, encoded]) if chain else encoded))
    if forwarded_proto is None:
        lines.append(b"X-Forwarded-Proto: %b\r\n" % scheme.encode("latin-1"))
    if forwarded_host is None and own_host:
        lines.append(b"X-Forwarded-Host: %b\r\n" % own_host)
    return b"".join(lines)


@functools.lru_cache(maxsize=256)
def _own_forwarding(remote: str, scheme: str, host: bytes) -> bytes:
    """The forwarding lines of a request that came with none: ``Forwarded`` and ``X-Forwarded-For/Proto/Host`` from
    this connection and its Host (the same few each time: a client sends one Host over its connection)."""
    lines = [
        b"Forwarded: %b\r\n" % forwarded("", remote, scheme, host.decode("latin-1")).encode("latin-1"),
        b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\n" % (remote.encode("latin-1"), scheme.encode("latin-1")),
    ]
    if host:
        lines.append(b"X-Forwarded-Host: %b\r\n" % host)
    return b"".join(lines)


@functools.lru_cache(maxsize=16)
def _special_out(drop: frozenset[bytes]) -> frozenset[bytes]:
    """The request fields upstream_headers does not pass on unchanged, for one hop's ``drop`` (the same each time)."""
    return _SKIP_OUT_RAW | drop | {b"x-forwarded-for", b"host"}


def _connection_tokens(value: bytes) -> frozenset[bytes]:
    """The field names a Connection header lists (lower-case): hop-by-hop for this exchange only."""
    return frozenset(token.strip().lower() for token in value.split(b",") if token.strip())


def _decoded(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def forwarded(
    chain: str, remote: str, scheme: str, host: str, forwarded_host: str | None = None,
    forwarded_proto: str | None = None,
) -> str:  # fmt: skip
    """A ``Forwarded`` value from the X-Forwarded-* headers (Knative's shim: ``chain`` is the first X-Forwarded-For
    value), or from this connection if there are none."""
    nodes = [node.strip() for node in chain.split(",") if node.strip()]
    if not nodes:
        return f"for={_node(remote)};host={host};proto={scheme}" if host else f"for={_node(remote)};proto={scheme}"
    first = f"for={_node(nodes[0])}"
    if forwarded_host is not None:
        first += f";host={forwarded_host}"
    if forwarded_proto is not None:
        first += f";proto={forwarded_proto}"
    return ", ".join([first, *(f"for={_node(node)}" for node in nodes[1:])])


def _node(address: str) -> str:
    return f'"[{address}]"' if ":" in address else address


def response_head(
    raw: Iterable[tuple[bytes, bytes]], timing: str, extra: Mapping[str, str] | None = None, *, head_only: bool = False
) -> tuple[bytes, int | None, bool]:
    """An upstream's response header fields (undecoded) as the client should get them, in one pass: hop-by-hop
    ones gone (and those its Connection header names), the length left for the server to set again (kept, for
    the answer to a HEAD, which has no body to measure), this hop's ``timing`` appended to ``Server-Timing``, and
    ``extra`` replacing any field of the same name. Returns the header lines, encoded, with the upstream's
    Content-Length (None if it sent none) and whether the body is a server-sent event stream."""
    skip = _SKIP_BACK_RAW if not extra else _skip_back(tuple(extra))
    lines: list[bytes] = []
    timings: list[bytes] = []
    length: int | None = None
    stream = False
    named: frozenset[bytes] = frozenset()
    for name, value in raw:
        lower = name.lower()
        if lower in skip:
            if lower == b"server-timing":
                timings.append(value)
            elif lower == b"content-length":
                length = int(value) if value.isdigit() else None
                if head_only and length is not None:
                    lines.append(b"Content-Length: %d\r\n" % length)
            elif lower == b"connection":
                named = _connection_tokens(value) - skip
            continue
        if lower == b"content-type" and value[:17].lower() == b"text/event-stream":  # media types ignore case
            stream = True
        lines.append(b"%b: %b\r\n" % (name, value))
    if named:  # rare: the fields the Connection header names go too (found again rather than tracked per line)
        lines = [line for line in lines if line.partition(b":")[0].lower() not in named]
    timings.append(timing.encode("latin-1"))
    lines.append(b"Server-Timing: %b\r\n" % b", ".join(timings))
    if extra:
        for key, value in extra.items():
            lines.append(f"{key}: {value}\r\n".encode("latin-1"))
    return b"".join(lines), length, stream


@functools.lru_cache(maxsize=64)
def _skip_back(replaced: tuple[str, ...]) -> frozenset[bytes]:
    """The response fields not passed back when a hop sets ``replaced`` itself (the same few names every time)."""
    return _SKIP_BACK_RAW | {key.lower().encode("latin-1") for key in replaced}


def _hop_timing(hop: str, started: float, extra: Mapping[str, float] | None) -> str:
    """This hop's ``Server-Timing`` entries: ``<hop>;dur=<ms>`` since ``started``, then any ``extra``."""
    entry = f"{hop};dur={(time.perf_counter() - started) * 1000:.3f}"
    if not extra:
        return entry
    return ", ".join([entry, *(f"{name};dur={seconds * 1000:.3f}" for name, seconds in extra.items())])


def _unreachable(upstream: str, exc: BaseException) -> UpstreamError:
    return UpstreamError(f"upstream {upstream} failed: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return f"connection failed ({exc.strerror or 'refused'})"
    if exc.__class__.__name__ == "UpstreamClosed":
        return str(exc)
    return f"connection error ({(exc.strerror if isinstance(exc, OSError) else None) or exc})"
