"""The model server as a real process: `servelane model-server` starts, serves, and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from model_server.onnx_model import CUDA, default_providers
from tests.harness import ServiceProcess, free_port
from tests.slow_model import slow_repository

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def repository(tmp_path: Path, iris_repository: Path) -> Path:
    return slow_repository(tmp_path / "models", iris_repository, instances=4)


def start(repository: Path, *extra: str) -> tuple[ServiceProcess, int, int]:
    http_port, grpc_port = free_port(), free_port()
    proc = ServiceProcess(
        "servelane", "model-server", "--model-repository", str(repository),
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra,
    ).start()
    proc.wait_http(f"http://127.0.0.1:{http_port}/v2/health/ready")
    return proc, http_port, grpc_port


async def test_sigterm_finishes_in_flight_requests_then_exits_0(repository):
    proc, port, _ = start(repository, "--grace-period", "20")
    try:
        slow = {"inputs": [
            {"name": "x", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256},
            {"name": "iterations", "shape": [1], "datatype": "INT64", "data": [60_000]},
        ]}
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:

            async def call() -> int:
                async with http.post("/v2/models/slow/infer", json=slow) as response:
                    await response.read()
                    return response.status

            calls = [asyncio.create_task(call()) for _ in range(8)]
            await asyncio.sleep(0.3)
            assert not all(c.done() for c in calls)
            proc.signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as fresh:
                    async with fresh.get(f"http://127.0.0.1:{port}/v2/health/live") as response:
                        await response.read()
            statuses = await asyncio.gather(*calls)
        assert statuses == [200] * 8
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        proc.stop()
    assert "received SIGTERM" in proc.output()


@pytest.mark.skipif(CUDA in [spec.name for spec in default_providers()], reason="this host has a usable GPU")
async def test_cpu_only_host_serves_on_cpu_and_says_so(repository):
    proc, port, _ = start(repository)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get("/v2/models/sklearn-iris") as response:
                meta = await response.json()
            async with http.get("/metrics") as response:
                metrics = await response.text()
    finally:
        assert proc.stop() == 0
    assert meta["parameters"]["execution_providers"] == ["CPUExecutionProvider"]
    assert 'provider="CPUExecutionProvider"' in metrics
    assert "execution providers in use: ['CPUExecutionProvider']" in proc.output()


async def test_requested_gpu_provider_falls_back_to_cpu_and_is_reported(repository, tmp_path):
    (repository / "sklearn-iris" / "config.yaml").write_text(
        "execution_providers: [CUDAExecutionProvider, CPUExecutionProvider]\n"
    )
    proc, port, _ = start(repository)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get("/v2/models/sklearn-iris") as response:
                meta = await response.json()
            async with http.post("/v1/models/sklearn-iris:predict", json={"instances": [[6.8, 2.8, 4.8, 1.4]]}) as r:
                assert (await r.json()) == {"predictions": [1]}
    finally:
        proc.stop()
    if meta["parameters"]["execution_providers"][0] == "CUDAExecutionProvider":
        pytest.skip("this host has a usable GPU")
    assert meta["parameters"]["requested_execution_providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert meta["parameters"]["execution_providers"] == ["CPUExecutionProvider"]
    assert "could not start ['CUDAExecutionProvider']" in proc.output()


def test_cli_help_and_unknown_component():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "servelane", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "model-server" in out.stdout
    out = subprocess.run([sys.executable, "-m", "servelane", "nope"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "unknown command" in out.stderr
    out = subprocess.run([sys.executable, "-m", "model_server"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--model-repository" in out.stderr


def test_single_model_flags(tmp_path, iris_repository):
    port = free_port()
    proc = ServiceProcess(
        "model_server", "--model-name", "iris", "--model-path",
        str(iris_repository / "sklearn-iris" / "1" / "model.onnx"), "--http-port", str(port), "--grpc-port", "-1",
    ).start()
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/v2/models/iris/ready")
        started = time.monotonic()
        assert proc.stop() == 0
        assert time.monotonic() - started < 5
    finally:
        proc.stop()
