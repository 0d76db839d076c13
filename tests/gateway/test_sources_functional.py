"""Routing state from the controller's long poll (against a small stand-in controller that keeps the contract) and
from a routes file: applied when newer, kept while the controller is away, followed when it restarts with lower
versions, bad documents skipped."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.sources import ControllerSource, FileSource
from gateway.state import RoutingState
from tests.gateway.conftest import eventually
from tests.gateway.controller import Controller
from tests.gateway.documents import iris_document


@pytest.fixture
async def source(controller: Controller) -> AsyncIterator[tuple[ControllerSource, list[RoutingState]]]:
    applied: list[RoutingState] = []
    s = ControllerSource(f"http://127.0.0.1:{controller.port}/", applied.append, wait=0.5, max_backoff=0.05)
    s.start()
    yield s, applied
    await s.stop()


async def test_long_poll_applies_each_newer_version(controller: Controller, source) -> None:
    s, applied = source
    await eventually(lambda: len(controller.polls) == 1)
    assert controller.polls[0] == (-1, 0.5)  # the first poll takes whatever the controller has
    await asyncio.sleep(0.6)  # nothing published: a 304, and polling goes on
    assert applied == [] and len(controller.polls) >= 2
    controller.publish(iris_document(version=3))
    await eventually(lambda: len(applied) == 1)
    controller.publish(iris_document(version=4))
    await eventually(lambda: len(applied) == 2)
    assert [state.version for state in applied] == [3, 4]
    assert controller.polls[-1][0] == 4
    assert repr(s) == f"<ControllerSource http://127.0.0.1:{controller.port}/v1/routing version=4>"


async def test_outage_keeps_the_state_logs_once_and_follows_a_restarted_controller(
    controller: Controller, source, caplog: pytest.LogCaptureFixture
) -> None:
    s, applied = source
    controller.publish(iris_document(version=7))
    await eventually(lambda: len(applied) == 1)
    caplog.set_level(logging.INFO, logger="gateway.sources")
    await controller.stop()
    polls = len(controller.polls)
    await eventually(lambda: s.outage)
    await asyncio.sleep(0.3)  # several retries, capped at 50 ms apart
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    assert "serving routing state version 7" in warnings[0].getMessage()

    controller.document = iris_document(version=1)  # restarted: its versions begin again
    await controller.start()
    await eventually(lambda: len(applied) == 2)
    assert applied[1].version == 1 and controller.polls[polls][0] == -1
    assert not s.outage and any("is back" in r.getMessage() for r in caplog.records)


async def test_a_bad_document_is_skipped(controller: Controller, source, caplog: pytest.LogCaptureFixture) -> None:
    s, applied = source
    bad = iris_document(version=5)
    bad["services"][0]["components"]["predictor"][0]["percent"] = 50
    controller.publish(bad)
    await eventually(lambda: s.version == 5)
    assert applied == []
    assert any("does not parse (version 5)" in r.getMessage() for r in caplog.records)
    controller.publish(iris_document(version=6))
    await eventually(lambda: len(applied) == 1)


async def test_routes_file_reload_on_change_on_demand_and_bad_files(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(json.dumps(iris_document(version=1)))  # JSON is YAML too
    applied: list[RoutingState] = []
    s = FileSource(routes, applied.append, interval=30)  # polls too rarely to matter here
    assert s.load().version == 1
    s.start()
    try:
        routes.write_text("version: [")
        s.reload()
        await asyncio.sleep(0.1)
        assert applied == []  # a bad file changes nothing
        routes.write_text(json.dumps(iris_document(version=2)))
        s.reload()
        await eventually(lambda: [state.version for state in applied] == [2])
        s.reload()  # SIGHUP re-reads even an unchanged file
        await eventually(lambda: len(applied) == 2)
    finally:
        await s.stop()


async def test_a_gateway_on_the_controller_is_ready_once_a_state_arrives(
    controller: Controller, start_gateway, start_backend, client
) -> None:
    backend = await start_backend("other")
    gateway = await start_gateway(
        {}, routes=None, controller=f"http://127.0.0.1:{controller.port}", controller_wait=0.5
    )
    admin = f"http://127.0.0.1:{gateway.ports['admin']}"
    async with client.get(f"{admin}/readyz") as response:
        assert response.status == 503
    async with client.get(f"http://127.0.0.1:{gateway.ports['http']}/v1/models/other-model:predict") as response:
        assert (response.status, await response.json()) == (503, {"error": "no routing state loaded yet"})
    doc = iris_document(version=2)
    doc["revisions"]["other-predictor-00001"]["endpoints"] = [{"http": backend.address}]
    controller.publish(doc)
    await eventually(lambda: gateway.state is not None)
    async with client.get(f"{admin}/readyz") as response:
        assert response.status == 200
    async with client.get(f"http://127.0.0.1:{gateway.ports['http']}/v1/models/other-model:predict") as response:
        assert response.status == 200 and backend.requests == 1
