"""Fixtures for queue-proxy tests: a controllable upstream and queue-proxies in front of it, on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from common.lifecycle import bound_port
from tests.queue_proxy.upstream import Upstream


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    runner = web.AppRunner(up.app(), shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    up.port = bound_port(runner)  # type: ignore[attr-defined]
    yield up
    up.release.set()
    up.chunk_gate.set()
    await runner.cleanup()


@pytest.fixture
async def start_queue_proxy() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    from queue_proxy.app import QueueProxy
    from queue_proxy.config import QueueProxyConfig

    proxies: list[QueueProxy] = []

    async def start(upstream_port: int, **overrides: Any) -> QueueProxy:
        settings: dict[str, Any] = {
            "upstream": f"127.0.0.1:{upstream_port}", "port": 0, "grpc_port": 0, "admin_port": 0,
            "stats_port": 0, "metrics_port": 0, "drain_quiet_period": 0.2,
            "revision": "iris-00001", "namespace": "default", "configuration": "iris", "pod": "iris-00001-pod",
        }
        settings.update(overrides)
        proxy = QueueProxy(QueueProxyConfig(**settings))
        proxies.append(proxy)
        await proxy.start()
        return proxy

    yield start
    for proxy in proxies:
        await proxy.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session
