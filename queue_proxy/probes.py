"""Probing the model server's readiness, as the queue-proxy does for the kubelet and the activator.

A probe is one HTTP GET of ``readiness_path`` on the upstream (success: 200-399) or, without a path, a TCP
connect. With ``period`` 0 (Knative's default) a probe is aggressive: it retries every 50 ms, each try bounded to
100 ms, for up to 10 s, and succeeds as soon as one try does — so readiness turns as soon as the model server is
ready. Concurrent callers share one probe run (coalesced) and its result. ``ready`` keeps the last outcome.
"""

from __future__ import annotations

import asyncio
import logging

from common.upstream import UpstreamPool

log = logging.getLogger(__name__)

RETRY_INTERVAL = 0.05
TRY_TIMEOUT = 0.1
AGGRESSIVE_FOR = 10.0
PROBE_USER_AGENT = "kube-probe/servelane"


class UpstreamProber:
    def __init__(self, host: str, port: int, path: str | None, period: float = 0.0) -> None:
        self.host, self.port, self.path, self.period = host, port, path, period
        self.ready = False
        self._running: asyncio.Task[bool] | None = None
        self._pool: UpstreamPool | None = None
        self._headers = (("Host", f"{host}:{port}"), ("User-Agent", PROBE_USER_AGENT))

    def __repr__(self) -> str:
        target = f"http://{self.host}:{self.port}{self.path}" if self.path else f"tcp://{self.host}:{self.port}"
        return f"<UpstreamProber {target} ready={self.ready}>"

    async def start(self) -> None:
        self._pool = UpstreamPool(self.host, self.port, 2)

    async def close(self) -> None:
        if self._running is not None:
            self._running.cancel()
        if self._pool is not None:
            self._pool.close()

    async def probe(self) -> bool:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run())
        return await asyncio.shield(self._running)

    async def _run(self) -> bool:
        self.ready = await self._aggressive() if self.period == 0 else await self._try(max(self.period, 1.0))
        return self.ready

    async def _aggressive(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + AGGRESSIVE_FOR
        while not await self._try(TRY_TIMEOUT):
            if loop.time() + RETRY_INTERVAL >= deadline:
                return False
            await asyncio.sleep(RETRY_INTERVAL)
        return True

    async def _try(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                if self.path is None:
                    _, writer = await asyncio.open_connection(self.host, self.port)
                    writer.close()
                    return True
                assert self._pool is not None
                response = await self._pool.request("GET", self.path, self._headers, None, None)
                try:
                    await response.read()
                finally:
                    response.release()
                return 200 <= response.status < 400
        except (OSError, TimeoutError):
            return False
