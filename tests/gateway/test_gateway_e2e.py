"""The gateway as a real process (``servelane gateway --routes FILE``) in front of stand-in replicas: routing by Host
and by path, a routes file re-read on SIGHUP, a bad routes file refused at start, and SIGTERM ending it with 0."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.gateway.documents import endpoint, iris_document
from tests.harness import ROOT, ServiceProcess, free_port

pytestmark = pytest.mark.timeout(60)


async def test_gateway_process_routes_and_reloads_on_sighup(tmp_path: Path, start_backend) -> None:
    first, second = await start_backend("first"), await start_backend("second")
    doc = iris_document({"other-predictor-00001": [endpoint(first.address)]})
    routes = tmp_path / "routes.yaml"
    routes.write_text(json.dumps(doc))
    ports = {name: free_port() for name in ("port", "grpc-port", "admin-port", "metrics-port")}
    gateway = ServiceProcess(
        "servelane", "gateway", "--routes", str(routes), "--poll-interval", "60", "--log-level", "WARNING",
        *(arg for name, port in ports.items() for arg in (f"--{name}", str(port))),
    ).start()  # fmt: skip
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
