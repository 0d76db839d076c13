"""``servelane up examples/``, as ``make run`` starts it: gateway → queue-proxy → iris transformer → gateway →
queue-proxy → iris predictor, every hop a real process; then Ctrl-C (SIGTERM) leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.http as httpclient

from tests.harness import ROOT, argv

KSERVE_EXAMPLE = {"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}  # KServe's sklearn-iris input, unchanged
NAMED = {
    "instances": [
        {"sepal_length": 6.8, "sepal_width": 2.8, "petal_length": 4.8, "petal_width": 1.4},
        {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    ]
}
HOST = "sklearn-iris.default.example.com"
PREDICTOR_HOST = "sklearn-iris-predictor.default.example.com"
IRIS = np.array(KSERVE_EXAMPLE["instances"], dtype=np.float32)


async def test_make_run_stack_end_to_end(servelane_up):
    up = servelane_up(ROOT / "examples")
    output = up.process.output()
    assert "curl -s" in output and "/v1/models/sklearn-iris:predict" in output

    async with aiohttp.ClientSession(up.base) as http:
        # the README's curl (named features) and KServe's own, with and without its Host header
        for body, headers, expected in (
            (NAMED, {}, ["versicolor", "setosa"]),
            (KSERVE_EXAMPLE, {}, ["versicolor", "versicolor"]),
            (KSERVE_EXAMPLE, {"Host": HOST}, ["versicolor", "versicolor"]),
        ):
            async with http.post("/v1/models/sklearn-iris:predict", json=body, headers=headers) as response:
                assert response.status == 200, await response.text()
                assert await response.json() == {"predictions": expected}
                assert response.headers["x-request-id"]
                timing = response.headers["Server-Timing"]
                assert "gateway" in timing and "predict" in timing

        # the predictor alone, by its component host: class indices, not names
        async with http.post(
            "/v1/models/sklearn-iris:predict", json=KSERVE_EXAMPLE, headers={"Host": PREDICTOR_HOST}
        ) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == {"predictions": [1, 1]}

        # nothing outside the routing state is reachable
        replica = next(
            r
            for s in up.status()["services"]
            for revs in s["components"].values()
            for rev in revs
            for r in rev["replicas"]
        )
        for path, headers, message in (
            ("/v1/models/sklearn-iris:predict", {"Host": "nope.default.example.com"}, "unknown host"),
            ("/v1/models/nope:predict", {}, "unknown model"),
            ("/v1/models/sklearn-iris:predict", {"Host": replica["http"]}, "unknown host"),
        ):
            async with http.post(path, json=KSERVE_EXAMPLE, headers=headers) as response:
                assert response.status == 404, await response.text()
                assert message in (await response.json())["error"]

    await asyncio.to_thread(_tritonclient_http, up.port)
    await _tritonclient_grpc(up.grpc_port)

    code, table, err = up.cli("status")
    assert code == 0, err
    for text in ("sklearn-iris-predictor-00001", "sklearn-iris-transformer-00001", "100%", "1/1"):
        assert text in table

    await _gateway_that_dies_is_restarted(up)

    code, still_alive = up.stop()
    assert code == 0, up.process.output()
    assert still_alive == []
    assert "stopped" in up.process.output()


def _tritonclient_http(port: int) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        x = httpclient.InferInput("input", [2, 4], "FP32")
        x.set_data_from_numpy(IRIS, binary_data=True)
        for headers in (None, {"Host": PREDICTOR_HOST}):  # through the transformer, and to the predictor alone
            result = client.infer(
                "sklearn-iris", [x], outputs=[httpclient.InferRequestedOutput("label")], headers=headers
            )
            assert result.as_numpy("label").tolist() == [1, 1]
    finally:
        client.close()


async def _tritonclient_grpc(port: int) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        x = grpcclient.InferInput("input", [2, 4], "FP32")
        x.set_data_from_numpy(IRIS)
        for headers in (None, {"x-servelane-host": PREDICTOR_HOST}):
            result = await client.infer("sklearn-iris", [x], headers=headers)
            assert result.as_numpy("label").tolist() == [1, 1]
        through = await client.infer("sklearn-iris", [x])
        assert through.as_numpy("species").tolist() == [b"versicolor", b"versicolor"]
    finally:
        await client.close()


async def _gateway_that_dies_is_restarted(up) -> None:
    """SIGKILL the gateway: ``up`` starts a new one on the same ports, fed the same routes by the controller."""
    (gateway,) = [pid for pid in up.process.descendants() if argv(pid)[1:3] == ["-m", "gateway"]]
    os.kill(gateway, signal.SIGKILL)
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession(up.base) as http:
        while True:
            try:
                async with http.post("/v1/models/sklearn-iris:predict", json=KSERVE_EXAMPLE) as response:
                    if response.status == 200:
                        assert await response.json() == {"predictions": ["versicolor", "versicolor"]}
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "the gateway was not restarted"
            await asyncio.sleep(0.1)
    assert [pid for pid in up.process.descendants() if argv(pid)[1:3] == ["-m", "gateway"]] != [gateway]
