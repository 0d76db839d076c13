"""The streaming HTTP reverse proxy every servelane hop shares (queue-proxy, gateway, activator).

One :class:`ProxyClient` per process holds one pooled aiohttp session with keep-alive. :meth:`ProxyClient.forward`
sends an incoming request to an upstream and streams the answer back:

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
headers, ``idle`` the gap between body chunks; each cancels the upstream call when it fires.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from common.errors import UpstreamError, UpstreamTimeout

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
CHUNK = 64 * 1024
TIMEOUT_MESSAGE = "request timeout"


@dataclass(frozen=True, slots=True)
class Timeouts:
    total: float | None = None
    response_start: float | None = None
    idle: float | None = None


class ProxyClient:
    """The process's one upstream client: a pooled session, created in :meth:`start`, closed in :meth:`close`."""

    def __init__(self, hop: str, *, limit: int = 1000, keepalive: float = 60.0, buffer_limit: int = 256 * 1024):
        self.hop = hop
        self.buffer_limit = buffer_limit
        self._limit = limit
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<ProxyClient {self.hop} open={self._session is not None and not self._session.closed}>"

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._limit, limit_per_host=self._limit, keepalive_timeout=self._keepalive, ttl_dns_cache=None
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # bodies pass through as the upstream encoded them
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(
        self,
        request: web.Request,
        upstream: str,
        *,
        headers: CIMultiDict[str] | None = None,
        timeouts: Timeouts = Timeouts(),
        started: float | None = None,
        timings: Mapping[str, float] | None = None,
    ) -> web.StreamResponse:
        """Proxy ``request`` to ``upstream`` (``http://host:port``), keeping its path and query.

        ``headers`` are the headers to send (default: :func:`upstream_headers` of the request); ``started`` is
        when this hop received the request (``time.perf_counter()``), for Server-Timing and the total timeout.
        """
        assert self._session is not None, "ProxyClient.start() was not awaited"
        started = time.perf_counter() if started is None else started
        loop = asyncio.get_running_loop()
        deadline = _Deadline(loop, timeouts, loop.time() - (time.perf_counter() - started))
        url = upstream + request.rel_url.raw_path_qs
        outgoing = upstream_headers(request) if headers is None else headers
        response: web.StreamResponse | None = None
        try:
            async with deadline.scope() as scope:
                body = await self._body(request)
                async with self._session.request(
                    request.method, url, headers=outgoing, data=body, allow_redirects=False
                ) as upstream_response:
                    deadline.response_started(scope)
                    headers = response_headers(upstream_response.headers)
                    headers["Server-Timing"] = _server_timing(upstream_response.headers, self.hop, started, timings)
                    length = upstream_response.content_length
                    status, reason = upstream_response.status, upstream_response.reason
                    if length is not None and length <= self.buffer_limit and not _is_stream(upstream_response):
                        body_bytes = await upstream_response.read()
                        return web.Response(status=status, reason=reason, body=body_bytes, headers=headers)
                    response = web.StreamResponse(status=status, reason=reason, headers=headers)
                    if length is not None:
                        response.content_length = length
                    await response.prepare(request)
                    async for chunk in upstream_response.content.iter_any():
                        await response.write(chunk)
                        deadline.wrote(scope)
                    await response.write_eof()
                    return response
        except TimeoutError:
            if response is None:
                raise UpstreamTimeout(TIMEOUT_MESSAGE) from None
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if response is None:
                raise UpstreamError(f"upstream {upstream} failed: {_reason(exc)}") from None
        except aiohttp.ClientPayloadError:
            if response is None:
                raise UpstreamError(f"upstream {upstream} sent a malformed response") from None
        _abort(request)  # the response had started: it cannot get an error status any more
        return response

    async def _body(self, request: web.Request) -> bytes | aiohttp.StreamReader | None:
        if not request.body_exists:
            return None
        length = request.content_length
        if length is not None and length <= self.buffer_limit:
            return await request.read()
        return request.content


class _Deadline:
    """One ``asyncio.timeout`` scope, rescheduled as the exchange moves on (no task per stage or chunk)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeouts: Timeouts, start: float) -> None:
        self._loop = loop
        self._timeouts = timeouts
        self._end = None if timeouts.total is None else start + timeouts.total

    def scope(self) -> asyncio.Timeout:
        first = [t for t in (self._timeouts.response_start, self._timeouts.idle) if t is not None]
        return asyncio.timeout_at(self._next(min(first) if first else None))

    def response_started(self, scope: asyncio.Timeout) -> None:
        scope.reschedule(self._next(self._timeouts.idle))

    def wrote(self, scope: asyncio.Timeout) -> None:
        if self._timeouts.idle is not None:
            scope.reschedule(self._next(self._timeouts.idle))

    def _next(self, stage: float | None) -> float | None:
        candidates = [t for t in (self._end, None if stage is None else self._loop.time() + stage) if t is not None]
        return min(candidates) if candidates else None


def upstream_headers(request: web.Request) -> CIMultiDict[str]:
    """The request's headers as an upstream should get them: hop-by-hop gone, X-Forwarded-* and Forwarded set."""
    incoming = request.headers
    headers = _without_hop_by_hop(incoming)
    remote = request.remote or ""
    if "Forwarded" not in headers:
        headers["Forwarded"] = forwarded(incoming, remote, request.scheme, request.host)
    previous = incoming.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{previous}, {remote}" if previous else remote
    if "X-Forwarded-Proto" not in headers:
        headers["X-Forwarded-Proto"] = request.scheme
    if "X-Forwarded-Host" not in headers and request.host:
        headers["X-Forwarded-Host"] = request.host
    return headers


def forwarded(incoming: Mapping[str, str], remote: str, scheme: str, host: str) -> str:
    """A ``Forwarded`` value from the X-Forwarded-* headers (Knative's shim), or from this connection if none."""
    chain = [node.strip() for node in incoming.get("X-Forwarded-For", "").split(",") if node.strip()]
    if not chain:
        return f"for={_node(remote)};host={host};proto={scheme}" if host else f"for={_node(remote)};proto={scheme}"
    first = f"for={_node(chain[0])}"
    if "X-Forwarded-Host" in incoming:
        first += f";host={incoming['X-Forwarded-Host']}"
    if "X-Forwarded-Proto" in incoming:
        first += f";proto={incoming['X-Forwarded-Proto']}"
    return ", ".join([first, *(f"for={_node(node)}" for node in chain[1:])])


def _node(address: str) -> str:
    return f'"[{address}]"' if ":" in address else address


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    out = _without_hop_by_hop(headers)
    out.popall("Content-Length", None)  # set again from the body by aiohttp
    return out


def _without_hop_by_hop(headers: Mapping[str, str]) -> CIMultiDict[str]:
    named = {token.strip().lower() for token in headers.get("Connection", "").split(",") if token.strip()}
    return CIMultiDict(
        (key, value) for key, value in headers.items() if key.lower() not in HOP_BY_HOP and key.lower() not in named
    )


def _server_timing(
    upstream: CIMultiDictProxy[str], hop: str, started: float, extra: Mapping[str, float] | None
) -> str:
    entries = [f"{hop};dur={(time.perf_counter() - started) * 1000:.3f}"]
    if extra:
        entries.extend(f"{name};dur={seconds * 1000:.3f}" for name, seconds in extra.items())
    existing = ", ".join(upstream.getall("Server-Timing", ()))
    return ", ".join([existing, *entries]) if existing else ", ".join(entries)


def _is_stream(upstream: aiohttp.ClientResponse) -> bool:
    return upstream.headers.get("Content-Type", "").startswith("text/event-stream")


def _reason(exc: Exception) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed before the response"
    return f"connection error ({exc})"


def _abort(request: web.Request) -> None:
    """Cut the client's connection, so a response that broke off after it started is seen as truncated."""
    if request.transport is not None:
        request.transport.abort()
