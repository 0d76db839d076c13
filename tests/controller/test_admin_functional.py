"""The controller's admin API on 127.0.0.1 (a scripted Scaler behind it, no replicas run), and the ``servelane
apply`` / ``status`` clients that talk to it, plus what ``servelane up`` says about a spec before it starts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from common.lifecycle import bound_port, free_port, start_http
from controller import up
from controller.admin import build_admin
from controller.controller import Controller
from controller.spec import InferenceServiceSpec, SpecError, load_paths
from tests.controller.scripted import GATEWAY, ScriptedScaler, spec, spec_text

WARNING = "spec.predictor.maxReplicas: recorded; the local backend runs max(minReplicas, 1) replicas until the "
WARNING += "autoscaler lands"


class Admin:
    def __init__(self, controller: Controller, scaler: ScriptedScaler, url: str, http: aiohttp.ClientSession):
        self.controller, self.scaler, self.url, self.http = controller, scaler, url, http

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.url + path) as response:
            body = await response.read()
            return response.status, (await response.json() if body else body)

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.http.post(self.url + path, **kwargs) as response:
            return response.status, await response.json()

    async def apply(self, specs: list[InferenceServiceSpec]) -> None:
        """Apply, then let the scale calls it started run (each bumps the routing state's version)."""
        await self.controller.apply(specs)
        for _ in range(5):
            await asyncio.sleep(0)


@pytest.fixture
async def stats_server() -> AsyncIterator[str]:
    """A queue-proxy's stats port as the admin API reads it: JSON with the average concurrency."""

    async def stat(request: web.Request) -> web.Response:
        return web.json_response({"average_concurrent_requests": 2.5, "request_count": 9.0, "in_flight": 3})

    app = web.Application()
    app.router.add_get("/", stat)
    runner = await start_http(app, "127.0.0.1", 0, shutdown_timeout=1)
    yield f"127.0.0.1:{bound_port(runner)}"
    await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_admin(stats: str, **options: Any) -> AsyncIterator[Admin]:
    """The admin API on a free port, over a controller whose replicas report their stats at ``stats``."""
    scaler = ScriptedScaler(stats)
    controller = Controller(scaler, GATEWAY, retire_delay=0)
    scaler.controller = controller
    runner = await start_http(build_admin(controller, **options), "127.0.0.1", 0, shutdown_timeout=1)
    try:
        async with aiohttp.ClientSession() as http:
            yield Admin(controller, scaler, f"http://127.0.0.1:{bound_port(runner)}", http)
    finally:
        await runner.cleanup()
        await controller.close()


@pytest.fixture
async def admin(stats_server: str) -> AsyncIterator[Admin]:
    async with serve_admin(stats_server) as served:
        yield served


@pytest.fixture
async def admin_without_stats() -> AsyncIterator[Admin]:
    async with serve_admin(f"127.0.0.1:{free_port()}") as served:  # nothing listens there
        yield served


async def test_routing_answers_at_once_when_the_version_is_past_after(admin: Admin, tmp_path: Path):
    await admin.apply(spec(tmp_path, 1))
    status, doc = await admin.get("/v1/routing")  # after defaults to -1
    assert status == 200 and doc["version"] == admin.controller.state.version
    assert [t["revision"] for t in doc["services"][0]["components"]["predictor"]] == ["adder-predictor-00001"]
    status, doc = await admin.get(f"/v1/routing?after={doc['version'] - 1}&wait=5")
    assert status == 200 and doc["version"] == admin.controller.state.version


async def test_routing_is_304_with_no_body_when_wait_passes_without_a_change(admin: Admin, tmp_path: Path):
    await admin.apply(spec(tmp_path, 1))
    version = admin.controller.state.version
    status, body = await admin.get(f"/v1/routing?after={version}&wait=0.05")
    assert (status, body) == (304, b"")


async def test_routing_long_poll_answers_on_the_next_change(admin: Admin, tmp_path: Path):
    await admin.apply(spec(tmp_path, 1))
    version = admin.controller.state.version
    waiting = asyncio.create_task(admin.get(f"/v1/routing?after={version}&wait=30"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    admin.scaler.ready("adder-predictor-00001")
    status, doc = await asyncio.wait_for(waiting, 5)
    assert status == 200 and doc["version"] > version


async def test_routing_long_poll_is_capped_whatever_wait_it_asks_for(stats_server: str, tmp_path: Path):
    async with serve_admin(stats_server, max_wait=0.2) as admin:  # the cap is 300 s when served by up
        await admin.apply(spec(tmp_path, 1))
        version = admin.controller.state.version
        for wait in ("3600", "inf"):
            status, body = await asyncio.wait_for(admin.get(f"/v1/routing?after={version}&wait={wait}"), 5)
            assert (status, body) == (304, b"")


@pytest.mark.parametrize("wait", ["nan", "-1"])
async def test_routing_refuses_a_wait_that_is_not_a_duration(admin: Admin, wait: str):
    status, answer = await admin.get(f"/v1/routing?wait={wait}")
    assert status == 400
    assert answer["error"] == f"query parameter wait must be a number of seconds >= 0, got {wait!r}"


async def test_routing_refuses_a_query_that_is_not_a_number(admin: Admin):
    assert await admin.get("/v1/routing?after=x") == (
        400,
        {"error": "query parameter after must be a number, got 'x'"},
    )


async def test_apply_answers_what_it_created_and_the_specs_warnings(admin: Admin, tmp_path: Path):
    document = {"text": spec_text(tmp_path, 1, extra="maxReplicas: 3"), "base_dir": str(tmp_path), "source": "a.yaml"}
    status, answer = await admin.post("/v1/apply", json={"documents": [document]})
    assert status == 200
    assert answer == {
        "applied": [
            {"service": "adder", "namespace": "default", "created": ["adder-predictor-00001"], "warnings": [WARNING]}
        ]
    }


@pytest.mark.parametrize(
    "body, message",
    [
        ({"data": b"not json"}, 'expected {"documents": [{"text", "base_dir", "source"}]}: JSONDecodeError'),
        ({"json": {"docs": []}}, 'expected {"documents": [{"text", "base_dir", "source"}]}: KeyError'),
        ({"json": {"documents": [{"text": "kind: x"}]}}, 'expected {"documents": [{"text", "base_dir", '),
    ],
)
async def test_apply_refuses_a_body_that_is_not_documents_with_400(admin: Admin, body: dict, message: str):
    status, answer = await admin.post("/v1/apply", **body)
    assert status == 400 and answer["error"].startswith(message), answer
    assert admin.controller.state.services == ()


async def test_apply_refuses_a_bad_spec_with_400_naming_the_field_and_changes_nothing(admin: Admin, tmp_path: Path):
    text = spec_text(tmp_path, 1).replace("name: onnx", "name: sklearn")
    document = {"text": text, "base_dir": str(tmp_path), "source": "bad.yaml"}
    status, answer = await admin.post("/v1/apply", json={"documents": [document]})
    assert status == 400
    assert answer["error"].startswith("spec.predictor.model.modelFormat.name: 'sklearn' is not served")
    assert answer["error"].endswith("(in bad.yaml)")
    assert admin.controller.state.services == () and admin.scaler.calls == []


async def test_apply_refuses_a_service_defined_in_two_documents_as_up_does_and_changes_nothing(
    admin: Admin, tmp_path: Path
):
    documents = [
        {"text": spec_text(tmp_path, offset), "base_dir": str(tmp_path), "source": source}
        for offset, source in ((1, "a.yaml"), (2, "b.yaml"))
    ]
    status, answer = await admin.post("/v1/apply", json={"documents": documents})
    assert (status, answer) == (400, {"error": "metadata.name: default/adder is defined twice (in a.yaml and b.yaml)"})
    for offset, source in ((1, "a.yaml"), (2, "b.yaml")):
        (tmp_path / source).write_text(spec_text(tmp_path, offset))
    with pytest.raises(SpecError) as refused_by_up:  # the same input, the same words
        load_paths([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert refused_by_up.value.message.replace(str(tmp_path) + "/", "") == answer["error"]
    assert admin.controller.state.services == () and admin.scaler.calls == []
    status, answer = await admin.post("/v1/apply", json={"documents": documents[1:]})
    assert status == 200 and answer["applied"][0]["created"] == ["adder-predictor-00001"]  # no revision was burned


async def test_status_in_flight_is_each_replicas_average_concurrency(admin: Admin, tmp_path: Path):
    await admin.apply(spec(tmp_path, 1, min_replicas=2))
    status, report = await admin.get("/v1/status")
    assert status == 200
    (revision,) = report["services"][0]["components"]["predictor"]
    assert [(r["in_flight"], r["avg_concurrency"]) for r in revision["replicas"]] == [(3, 2.5), (3, 2.5)]
    header, row = (line.split() for line in up.table(report).splitlines())
    assert (header[7:9], row[7:9]) == (["IN-FLIGHT", "AVG-CONCURRENCY"], ["6", "5.0"])  # summed over the replicas


async def test_status_in_flight_is_none_when_a_queue_proxy_does_not_answer(admin_without_stats: Admin, tmp_path):
    await admin_without_stats.apply(spec(tmp_path, 1))
    status, report = await admin_without_stats.get("/v1/status")
    (revision,) = report["services"][0]["components"]["predictor"]
    assert status == 200 and [(r["in_flight"], r["avg_concurrency"]) for r in revision["replicas"]] == [(None, None)]
    assert up.table(report).splitlines()[1].split()[7:9] == ["-", "-"]


# -- the clients ----------------------------------------------------------------------------------------------------
async def test_servelane_apply_prints_what_was_created_and_each_warning(admin: Admin, tmp_path: Path, capsys):
    (tmp_path / "adder.yaml").write_text(spec_text(tmp_path, 1, extra="maxReplicas: 3"))
    code = await asyncio.to_thread(up.apply, [str(tmp_path / "adder.yaml"), "--controller", admin.url])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == "default/adder: adder-predictor-00001\n"
    assert err == f"servelane apply: warning: default/adder: {WARNING}\n"


async def test_servelane_apply_prints_the_controllers_400(admin: Admin, tmp_path: Path, capsys):
    (tmp_path / "adder.yaml").write_text(spec_text(tmp_path, 1).replace("name: onnx", "name: sklearn"))
    code = await asyncio.to_thread(up.apply, [str(tmp_path / "adder.yaml"), "--controller", admin.url])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.startswith("servelane apply: spec.predictor.model.modelFormat.name: 'sklearn' is not served")


def test_servelane_up_prints_each_warning_before_it_starts(tmp_path: Path, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(up.logs, "configure", lambda *args: None)
    monkeypatch.setattr(up, "run_service", started.append)  # the stack itself is tested in tests/e2e
    (tmp_path / "adder.yaml").write_text(spec_text(tmp_path, 1, extra="maxReplicas: 3"))
    assert up.up([str(tmp_path / "adder.yaml")]) == 0
    assert capsys.readouterr().err == f"servelane up: warning: default/adder: {WARNING}\n"
    assert len(started) == 1
