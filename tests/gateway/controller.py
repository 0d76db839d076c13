"""A stand-in controller for gateway tests: only the routing long poll of the admin API, keeping its contract
(controller/admin.py), so a test can publish documents, stop it and start it again on the same port."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from common.lifecycle import free_port


class Controller:
    """``GET /v1/routing?after=N&wait=S``: 200 with the document once its version is above N, else 304 after S."""

    def __init__(self) -> None:
        self.document: dict[str, Any] | None = None
        self.body: bytes | None = None
        self.changed = asyncio.Event()
        self.polls: list[tuple[int, float]] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def publish(self, document: dict[str, Any], body: bytes | None = None) -> None:
        self.document, self.body = document, body
        self.changed.set()
        self.changed = asyncio.Event()

    async def routing(self, request: web.Request) -> web.Response:
        after, wait = int(request.query["after"]), float(request.query["wait"])
        self.polls.append((after, wait))
        if self.document is None or self.document["version"] <= after:
            try:
                await asyncio.wait_for(self.changed.wait(), wait)
            except TimeoutError:
                return web.Response(status=304)
        assert self.document is not None
        return web.Response(body=self.body or json.dumps(self.document).encode(), content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/routing", self.routing)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=True)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
