"""The queue-proxy and the model server as real processes: inference over REST and gRPC through the proxy, and a
SIGTERM with 50 slow requests in flight that loses none of them."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient

from tests.harness import ServiceProcess, free_port
from tests.slow_model import slow_repository

pytestmark = pytest.mark.timeout(120)
IRIS = np.array([[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]], dtype=np.float32)


@pytest.fixture
def repository(tmp_path: Path, iris_repository: Path) -> Path:
    return slow_repository(tmp_path / "models", iris_repository, instances=8)


@pytest.fixture
def stack(repository):
    """A model server and a queue-proxy in front of it, each its own process."""
    http, grpc_port = free_port(), free_port()
    server = ServiceProcess(
        "model_server", "--model-repository", str(repository), "--http-port", str(http), "--grpc-port", str(grpc_port),
        "--log-level", "WARNING",
    ).start()
    ports = {name: free_port() for name in ("port", "grpc-port", "admin-port", "stats-port", "metrics-port")}
    proxy = ServiceProcess(
        "servelane", "queue-proxy", "--upstream", f"127.0.0.1:{http}", "--upstream-grpc", f"127.0.0.1:{grpc_port}",
        "--container-concurrency", "0", "--drain-quiet-period", "1", "--pod", "e2e-pod",
        *(arg for name, port in ports.items() for arg in (f"--{name}", str(port))),
    ).start()
    try:
        server.wait_http(f"http://127.0.0.1:{http}/v2/health/ready")
        proxy.wait_http(f"http://127.0.0.1:{ports['stats-port']}/metrics")
        yield proxy, ports
    finally:
        proxy.stop()
        server.stop()


async def test_inference_through_the_queue_proxy_over_rest_and_grpc(stack):
    proxy, ports = stack
    async with aiohttp.ClientSession() as http:
        probe = {"User-Agent": "kube-probe/1.29", "K-Network-Probe": "queue"}
        async with http.get(f"http://127.0.0.1:{ports['port']}/", headers=probe) as response:
            assert response.status == 200 and await response.text() == "queue"
        body = {"instances": IRIS.tolist()}
        async with http.post(f"http://127.0.0.1:{ports['port']}/v1/models/sklearn-iris:predict", json=body) as r:
            assert r.status == 200 and await r.json() == {"predictions": [1, 1]}
            assert "queue-proxy;dur=" in r.headers["Server-Timing"]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc-port']}")
    try:
        x = grpcclient.InferInput("input", [2, 4], "FP32")
        x.set_data_from_numpy(IRIS)
        result = await client.infer("sklearn-iris", [x], request_id="through-qp")
        assert result.as_numpy("label").tolist() == [1, 1]
        assert result.get_response().id == "through-qp"
        assert await client.is_model_ready("sklearn-iris")
    finally:
        await client.close()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{ports['metrics-port']}/metrics") as response:
            text = await response.text()
    ok = [line for line in text.splitlines() if line.startswith("queue_requests_total{") and '"2xx"' in line]
    assert [line.rsplit(" ", 1)[1] for line in ok] == ["3.0"]  # predict over REST, infer and ready over gRPC


async def test_sigterm_with_50_slow_requests_in_flight_loses_none(stack):
    proxy, ports = stack
    slow = {"inputs": [
        {"name": "x", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256},
        {"name": "iterations", "shape": [1], "datatype": "INT64", "data": [40_000]},
    ]}
    target = f"http://127.0.0.1:{ports['port']}/v2/models/slow/infer"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def call() -> int:
            async with http.post(target, json=slow) as response:
                body = await response.json()
                assert response.status != 200 or body["outputs"][0]["shape"] == [1, 256]
                return response.status

        calls = [asyncio.create_task(call()) for _ in range(50)]
        await asyncio.sleep(0.5)
        assert sum(c.done() for c in calls) < 50, "the requests should still be in flight"
        proxy.signal(signal.SIGTERM)
        started = time.monotonic()
        await asyncio.sleep(0.2)  # the signal is handled between two of the proxy's loop iterations
        probe = {"User-Agent": "kube-probe/1.29", "K-Network-Probe": "queue"}
        async with http.get(f"http://127.0.0.1:{ports['port']}/", headers=probe) as response:
            assert response.status == 503  # draining: probes fail at once
        statuses = await asyncio.gather(*calls)
    assert statuses == [200] * 50
    assert await asyncio.to_thread(proxy.wait, 30) == 0
    assert time.monotonic() - started >= 1.0  # it waited for the quiet period
    assert "draining" in proxy.output()
