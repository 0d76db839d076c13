"""Shared fixtures: example and test-built model repositories, and an in-process model server on free ports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT

IRIS_REPOSITORY = ROOT / "examples" / "models"


@pytest.fixture(scope="session")
def fresh_stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every protobuf stub scripts/gen_proto.py makes, generated once into a temporary folder."""
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(out)],
        cwd=ROOT, check=True, capture_output=True, timeout=60,
    )
    return out


@pytest.fixture
def iris_repository() -> Path:
    return IRIS_REPOSITORY


@pytest.fixture
async def start_model_server() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Factory: ``await start_model_server(repository, **config)`` starts a ModelServer on 127.0.0.1 free ports."""
    from model_server.app import ModelServer
    from model_server.config import ModelServerConfig

    servers: list[ModelServer] = []

    async def start(repository: Path | None = None, *, wait: bool = True, **overrides: Any) -> ModelServer:
        settings: dict[str, Any] = {"host": "127.0.0.1", "http_port": 0, "grpc_port": 0, "grace_period": 5.0}
        if repository is not None:
            settings["model_repository"] = repository
        settings.update(overrides)
        server = ModelServer(ModelServerConfig(**settings))
        servers.append(server)
        await server.start()
        if wait:
            await server.wait_loaded()
        return server

    yield start
    for server in servers:
        await server.stop()
