"""A controllable upstream for proxy tests: an aiohttp app whose handlers wait on events the test sets.

Not a double of any servelane component: it stands in for "some HTTP server behind the proxy", so a test can hold
requests, stream chunk by chunk, or stall, and see exactly what arrived.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class Upstream:
    release: asyncio.Event = field(default_factory=asyncio.Event)
    chunk_gate: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    max_running: int = 0
    served: int = 0
    cancelled: int = 0
    ready: bool = True
    readiness_hits: int = 0
    seen_headers: list[CIMultiDict[str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/v2/health/ready", self.readiness)
        app.router.add_route("*", "/hold", self.hold)
        app.router.add_get("/headers", self.headers)
        app.router.add_post("/echo", self.echo)
        app.router.add_get("/chunked", self.chunked)
        app.router.add_get("/sse", self.sse)
        app.router.add_get("/late-start", self.late_start)
        app.router.add_get("/stall", self.stall)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_get("/die", self.die)
        return app

    async def readiness(self, request: web.Request) -> web.Response:
        self.readiness_hits += 1
        return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

    async def hold(self, request: web.Request) -> web.Response:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        self.served += 1
        return web.Response(text="held")

    async def headers(self, request: web.Request) -> web.Response:
        self.seen_headers.append(CIMultiDict(request.headers))
        return web.json_response(dict(request.headers), headers={"Server-Timing": "app;dur=1.000"})

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body, headers={"X-Length": str(len(body))})

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first;")
        await self.chunk_gate.wait()
        await response.write(b"second")
        await response.write_eof()
        return response

    async def sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await self.chunk_gate.wait()
        await response.write(b"data: two\n\n")
        await response.write_eof()
        return response

    async def late_start(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(float(request.query.get("delay", "0")))
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(int(request.query.get("chunks", "1"))):
            await response.write(b"x")
            await asyncio.sleep(float(request.query.get("gap", "0")))
        await response.write_eof()
        return response

    async def stall(self, request: web.Request) -> web.StreamResponse:
        try:
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"partial")
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return response

    async def die(self, request: web.Request) -> web.Response:
        """The upstream process dying mid-request: the connection drops with no response."""
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="as asked")
