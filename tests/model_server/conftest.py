"""Fixtures for model-server tests: a server on each module's ``repository`` fixture, and a client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest


@pytest.fixture
async def server(start_model_server: Any, repository: Path) -> Any:
    """The model server over the test module's own ``repository`` fixture."""
    return await start_model_server(repository)


@pytest.fixture
async def http(server: Any) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as session:
        yield session
