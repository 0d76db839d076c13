"""A stand-in replica for gateway tests: an aiohttp app that answers any path with what it received, so a test sees
which replica a request reached and with which headers. ``/hold`` waits on ``release``. Not a double of any
servelane component: it is "some HTTP server the gateway routes to"."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class Backend:
    name: str
    release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    requests: int = 0
    holding: int = 0
    seen: list[tuple[str, CIMultiDict[str]]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/hold", self.hold)
        app.router.add_route("*", "/{tail:.*}", self.answer)
        return app

    async def answer(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.seen.append((request.path_qs, CIMultiDict(request.headers)))
        body = await request.read()
        return web.json_response(
            {"backend": self.name, "path": request.path_qs, "body": body.decode(errors="replace")},
            headers={"Server-Timing": "app;dur=1.000", "X-Request-Id": "set-by-the-backend"},
        )

    async def hold(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.holding += 1
        try:
            await self.release.wait()
        finally:
            self.holding -= 1
        return web.json_response({"backend": self.name, "path": request.path_qs})
