"""The gateway as a real process (``servelane gateway --routes FILE`` or ``--controller URL``) in front of stand-in
replicas: routing by Host and by path, a routes file re-read on SIGHUP, a bad routes file refused at start, each
request to the least busy replica, the last routing state served while the controller is away, and SIGTERM ending
it with 0."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.gateway.conftest import eventually
from tests.gateway.controller import Controller
from tests.gateway.documents import endpoint, iris_document
from tests.harness import ROOT, ServiceProcess, free_port

pytestmark = pytest.mark.timeout(60)
OTHER = "other.prod.example.com"  # the host of iris_document's one-revision service, other-predictor-00001


def gateway_process(*source: str) -> tuple[ServiceProcess, dict[str, int]]:
    """``servelane gateway`` with ``source`` (``--routes FILE`` or ``--controller URL ...``) on free ports."""
    ports = {name: free_port() for name in ("port", "grpc-port", "admin-port", "metrics-port")}
    process = ServiceProcess(
        "servelane", "gateway", *source, *(arg for name, port in ports.items() for arg in (f"--{name}", str(port)))
    )
    return process.start(), ports


async def backend_of(client: aiohttp.ClientSession, url: str) -> str:
    """The stand-in replica that answered a GET through the gateway (asserting a 200)."""
    async with client.get(url, headers={"Host": OTHER}) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["backend"]


async def test_gateway_process_routes_and_reloads_on_sighup(tmp_path: Path, start_backend) -> None:
    first, second = await start_backend("first"), await start_backend("second")
    doc = iris_document({"other-predictor-00001": [endpoint(first.address)]})
    routes = tmp_path / "routes.yaml"
    routes.write_text(json.dumps(doc))
    gateway, ports = gateway_process("--routes", str(routes), "--poll-interval", "60", "--log-level", "WARNING")
    try:
        await asyncio.to_thread(gateway.wait_http, f"http://127.0.0.1:{ports['admin-port']}/readyz")
        base = f"http://127.0.0.1:{ports['port']}"
        async with aiohttp.ClientSession() as client:
            async with client.post(f"{base}/v2/models/other-model/infer", data=b"{}") as response:
                assert response.status == 200 and (await response.json())["backend"] == "first"
                assert "gateway;dur=" in response.headers["Server-Timing"]
            doc["version"] = 2
            doc["revisions"]["other-predictor-00001"]["endpoints"] = [endpoint(second.address)]
            routes.write_text(json.dumps(doc))
            gateway.signal(signal.SIGHUP)  # polling is once a minute here: only the signal can explain a reload
            for _ in range(200):
                async with client.get(f"http://127.0.0.1:{ports['admin-port']}/routing") as response:
                    if (await response.json())["version"] == 2:
                        break
                await asyncio.sleep(0.02)
            async with client.get(f"{base}/", headers={"Host": "other.prod.example.com"}) as response:
                assert (await response.json())["backend"] == "second"
    finally:
        code = await asyncio.to_thread(gateway.stop)
    assert code == 0, gateway.output()


def test_a_bad_routes_file_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text('{"services": [{"namespace": "default"}]}')
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--routes", str(routes), "--port", "0", "--grpc-port", "0",
         "--admin-port", "0", "--metrics-port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"servelane gateway: routes file {routes}: services[0].name must be a non-empty string" in done.stderr


async def test_gateway_process_sends_each_request_to_the_least_busy_replica(tmp_path: Path, start_backend) -> None:
    """One revision, three replicas: three requests held at once sit on three different replicas (by chance: 2 in
    9); while one replica holds a request, sequential requests never go there; sequential requests spread over all."""
    replicas = [await start_backend(f"replica-{i}") for i in range(3)]
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps(iris_document({"other-predictor-00001": [endpoint(r.address) for r in replicas]})))
    gateway, ports = gateway_process("--routes", str(routes), "--log-level", "WARNING")
    base, metrics = f"http://127.0.0.1:{ports['port']}", f"http://127.0.0.1:{ports['metrics-port']}/metrics"
    try:
        await asyncio.to_thread(gateway.wait_http, f"http://127.0.0.1:{ports['admin-port']}/readyz")
        async with aiohttp.ClientSession(base) as client:
            held: dict[str, asyncio.Task[str]] = {}
            for n in range(1, 4):
                task = asyncio.create_task(backend_of(client, "/hold"))
                await eventually(lambda n=n: sum(r.holding for r in replicas) == n)
                assert max(r.holding for r in replicas) == 1, f"held request {n} went to a busy replica"
                (name,) = {r.name for r in replicas if r.holding} - held.keys()
                held[name] = task
            assert [r.holding for r in replicas] == [1, 1, 1]

            busy, *free = replicas  # busy keeps its request; the two others finish theirs
            for replica in free:
                replica.release.set()
                assert await held[replica.name] == replica.name
            in_flight = 'gateway_requests_in_flight{namespace_name="prod",revision_name="other-predictor-00001"'
            async with client.get(metrics) as response:
                assert f'{in_flight},service_name="other"}} 1.0' in await response.text()
            answered = collections.Counter([await backend_of(client, "/") for _ in range(20)])
            assert busy.name not in answered and busy.requests == 1

            busy.release.set()
            assert await held[busy.name] == busy.name
            answered = collections.Counter([await backend_of(client, "/") for _ in range(90)])
            assert set(answered) == {r.name for r in replicas}
            assert min(answered.values()) >= 10, answered  # ties broken at random: 30 each on average
    finally:
        code = await asyncio.to_thread(gateway.stop)
    assert code == 0, gateway.output()


async def test_gateway_process_serves_its_last_state_while_the_controller_is_away(
    controller: Controller, start_backend
) -> None:
    """A gateway following the controller keeps routing (and stays ready) on the state it has while the controller is
    down, and follows the controller again once it is back, even with its versions begun again."""
    first, second = await start_backend("first"), await start_backend("second")
    doc = iris_document({"other-predictor-00001": [endpoint(first.address)]}, version=3)
    controller.publish(doc)
    gateway, ports = gateway_process("--controller", controller.url, "--controller-wait", "0.5", "--max-backoff", "0.1")
    base, admin = f"http://127.0.0.1:{ports['port']}", f"http://127.0.0.1:{ports['admin-port']}"
    try:
        await asyncio.to_thread(gateway.wait_http, f"{admin}/readyz")  # 200 only once a routing state is in force
        async with aiohttp.ClientSession(base) as client:
            assert await backend_of(client, "/") == "first"

            await controller.stop()
            await asyncio.to_thread(gateway.wait_output, "unreachable", 10)  # the gateway saw it go
            for _ in range(5):
                assert await backend_of(client, "/v2/models/other-model/infer") == "first"
                async with client.get(f"{admin}/readyz") as response:
                    assert (response.status, await response.text()) == (200, "ready: routing state version 3")
            assert first.requests == 6

            restarted = iris_document({"other-predictor-00001": [endpoint(second.address)]}, version=1)
            controller.publish(restarted)
            await controller.start()
            for _ in range(200):
                async with client.get(f"{admin}/routing") as response:
                    if (await response.json())["version"] == 1:
                        break
                await asyncio.sleep(0.02)
            assert await backend_of(client, "/") == "second"
    finally:
        code = await asyncio.to_thread(gateway.stop)
    assert code == 0, gateway.output()
