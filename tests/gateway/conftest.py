"""Fixtures for gateway tests: stand-in replicas, a stand-in controller and in-process gateways on 127.0.0.1 free
ports."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from common.lifecycle import bound_port
from gateway.app import Gateway
from gateway.config import GatewayConfig
from tests.gateway.backend import Backend
from tests.gateway.controller import Controller


@pytest.fixture
async def start_backend() -> AsyncIterator[Callable[[str], Awaitable[Backend]]]:
    runners: list[tuple[Backend, web.AppRunner]] = []

    async def start(name: str) -> Backend:
        backend = Backend(name)
        runner = web.AppRunner(backend.app(), shutdown_timeout=1.0, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        backend.port = bound_port(runner)
        runners.append((backend, runner))
        return backend

    yield start
    for backend, runner in runners:
        backend.release.set()
        await runner.cleanup()


@pytest.fixture
async def controller() -> AsyncIterator[Controller]:
    c = Controller()
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """Factory: ``await start_gateway(document, **config)``: a Gateway on free ports, routes from a JSON file."""
    gateways: list[Gateway] = []

    async def start(document: dict[str, Any], **overrides: Any) -> Gateway:
        routes = tmp_path / f"routes-{len(gateways)}.json"
        routes.write_text(json.dumps(document))
        settings: dict[str, Any] = {
            "routes": routes, "port": 0, "grpc_port": 0, "admin_port": 0, "metrics_port": 0, "grace_period": 2.0,
            "poll_interval": 0.05,
        }  # fmt: skip
        settings.update(overrides)
        gateway = Gateway(GatewayConfig(**settings), rng=random.Random(11))
        gateways.append(gateway)
        await gateway.start()
        return gateway

    yield start
    for gateway in gateways:
        await gateway.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds, checking every 10 ms; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
