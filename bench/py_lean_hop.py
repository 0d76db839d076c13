"""``python -m bench.py_lean_hop PORT UPSTREAM_PORT HOST REVISION``: the stack suite's floor for the gateway's work.

The gateway's per-request work on a small whole request, done on the raw bytes of each message instead of one
Python callback per header field: httptools frames each message (and so checks it); one regular-expression
search finds the Host, which must be ``HOST`` (anything else is 404); the request goes upstream with the
hop-by-hop fields and the client's Knative ones cut out, and ``Knative-Serving-Revision``/``-Namespace``,
``X-Forwarded-For``, ``Forwarded`` and a generated ``X-Request-Id`` (when it had none) added; the response comes
back with ``gateway`` appended to its ``Server-Timing`` and the request id set, and each outcome is counted by
status class in a latency histogram. About five Python calls per request, where the gateway's fast lane makes
about a hundred.

It is not a proxy to deploy: one upstream connection per client connection, whole messages only, no timeouts, no
balancing, no streaming, no flow control, no graceful stop. It shows what the gateway's c1 CPU could be if its
fast lane touched this little code per request (the stack suite's ``lean-predictor`` rows against
``gateway-predictor``); :mod:`bench.py_relay` is the floor below it, bytes passed as they came.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import re
import sys
import time

import httptools

from bench.py_relay import ClientEnd, serve

LOCAL = "127.0.0.1"
_HOST = re.compile(rb"\r\nhost:[ \t]*([^\r\n]*)", re.IGNORECASE)
_REQUEST_ID = re.compile(rb"\r\nx-request-id:[ \t]*([^\r\n]*)", re.IGNORECASE)
_SERVER_TIMING = re.compile(rb"\r\nserver-timing:[ \t]*([^\r\n]*)", re.IGNORECASE)
_CUT = re.compile(
    rb"\r\n(?:connection|keep-alive|proxy-connection|te|trailer|upgrade|knative-serving-revision"
    rb"|knative-serving-namespace|k-original-host)[ \t]*:[^\r\n]*",
    re.IGNORECASE,
)
_NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 25\r\n\r\n"
    b'{"error": "unknown host"}'
)
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Hop:
    def __init__(self, host: str, revision: str, upstream_port: int) -> None:
        self.host, self.revision, self.upstream_port = host.encode(), revision.encode(), upstream_port
        self.rng = random.Random()
        self.outcomes: dict[bytes, int] = {}
        self.histogram = [0] * (len(_BUCKETS) + 1)

    def observe(self, status_class: bytes, seconds: float) -> None:
        self.outcomes[status_class] = self.outcomes.get(status_class, 0) + 1
        self.histogram[bisect.bisect_left(_BUCKETS, seconds)] += 1


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.chunks: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        message = b"".join(self.chunks)
        self.chunks.clear()
        self.client.answer(message)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.client.close()


class _Client(ClientEnd):
    def __init__(self, hop: _Hop, loop: asyncio.AbstractEventLoop) -> None:
        self.hop, self.loop = hop, loop
        self.parser = httptools.HttpRequestParser(self)
        self.chunks: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.waiting: bytes | None = None  # a request that came before the upstream connection was up
        self.remote = b""
        self.started = 0.0
        self.request_id = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = peer[0].encode() if isinstance(peer, tuple) else b""
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _, self.upstream = await self.loop.create_connection(lambda: _Upstream(self), LOCAL, self.hop.upstream_port)
        except OSError:
            self.close()
            return
        if self.waiting is not None:
            self._send(self.waiting)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def on_message_complete(self) -> None:
        message = b"".join(self.chunks)
        self.chunks.clear()
        self.started = time.perf_counter()
        end = message.find(b"\r\n\r\n")
        head, body = message[:end], message[end:]
        host = _HOST.search(head)
        if host is None or host.group(1).lower() != self.hop.host:
            assert self.transport is not None
            self.transport.write(_NOT_FOUND)
            self.hop.observe(b"4", time.perf_counter() - self.started)
            return
        given = _REQUEST_ID.search(head)
        self.request_id = given.group(1) if given else b"%032x" % self.hop.rng.getrandbits(128)
        added = b"\r\nKnative-Serving-Revision: %b\r\nKnative-Serving-Namespace: default" % self.hop.revision
        added += b"\r\nX-Forwarded-For: %b\r\nForwarded: for=%b;proto=http" % (self.remote, self.remote)
        if given is None:
            added += b"\r\nX-Request-Id: " + self.request_id
        outgoing = _CUT.sub(b"", head) + added + body
        if self.upstream is None:
            self.waiting = outgoing
        else:
            self._send(outgoing)

    def _send(self, outgoing: bytes) -> None:
        assert self.upstream is not None and self.upstream.transport is not None
        self.waiting = None
        self.upstream.transport.write(outgoing)

    def answer(self, message: bytes) -> None:
        seconds = time.perf_counter() - self.started
        end = message.find(b"\r\n\r\n")
        head, body = message[:end], message[end:]
        timing = b"gateway;dur=%.3f" % (seconds * 1000)
        earlier = _SERVER_TIMING.search(head)
        if earlier is not None:
            head, timing = head[: earlier.start()] + head[earlier.end() :], earlier.group(1) + b", " + timing
        if self.transport is not None and not self.transport.is_closing():
            added = b"\r\nServer-Timing: " + timing + b"\r\nX-Request-Id: " + self.request_id
            self.transport.write(head + added + body)
        self.hop.observe(message[9:10], seconds)


def main(argv: list[str]) -> int:
    port, upstream_port, host, revision = int(argv[0]), int(argv[1]), argv[2], argv[3]
    hop = _Hop(host, revision, upstream_port)
    return serve(port, lambda loop: _Client(hop, loop))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
