"""``python -m bench.py_relay PORT UPSTREAM_PORT``: the queue-proxy suite's floor for a Python proxy.

The least an HTTP/1.1 proxy written in Python on uvloop can do per request: every client connection gets its own
upstream connection; httptools frames the requests and the responses (a proxy must know where each message ends),
and the bytes pass unchanged, with no header rewriting, no routing, no timeouts and no metrics. It is not a proxy
to deploy; it shows how much of a hop's cost on this machine is the interpreter and event loop themselves and how
much is the work a real hop adds on top (the queue-proxy rows against this one).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import httptools

from common.lifecycle import run_service

HOST = "127.0.0.1"


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)  # frames the response; the bytes go back as they came
        self.client.send(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.client.close()

    def on_message_complete(self) -> None:
        pass


class ClientEnd(asyncio.Protocol):
    """A floor hop's client connection, as far as both floors share it: it owns one upstream connection
    (``upstream``, a protocol with a ``transport``), closed when the client goes."""

    transport: asyncio.Transport | None = None
    upstream: Any = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Client(ClientEnd):
    def __init__(self, loop: asyncio.AbstractEventLoop, upstream_port: int) -> None:
        self.loop, self.upstream_port = loop, upstream_port
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.waiting: list[bytes] = []  # what arrived before the upstream connection was up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _, self.upstream = await self.loop.create_connection(lambda: _Upstream(self), HOST, self.upstream_port)
        except OSError:
            self.close()
            return
        for data in self.waiting:
            self._forward(data)
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()
            return
        if self.upstream is None:
            self.waiting.append(data)
        else:
            self._forward(data)

    def _forward(self, data: bytes) -> None:
        assert self.upstream is not None and self.upstream.transport is not None
        self.upstream.transport.write(data)

    def on_message_complete(self) -> None:
        pass

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


def serve(port: int, make: Callable[[asyncio.AbstractEventLoop], asyncio.Protocol]) -> int:
    """Run a floor hop on 127.0.0.1:``port`` until SIGTERM or SIGINT: ``make(loop)`` serves each client connection."""

    async def run(stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: make(loop), HOST, port, reuse_address=True)
        await stop.wait()
        server.close()

    return run_service(run)


def main(argv: list[str]) -> int:
    port, upstream_port = int(argv[0]), int(argv[1])
    return serve(port, lambda loop: _Client(loop, upstream_port))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
