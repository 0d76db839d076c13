"""``servelane up examples/``, as ``make run`` starts it: gateway → queue-proxy → iris transformer → gateway →
queue-proxy → iris predictor, every hop a real process; the curl commands it prints work as printed; the predictor
alone answers without the transformer's species; then Ctrl-C (SIGTERM) leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
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
# V2 outputs (name, datatype, shape) for IRIS: the predictor's own, and the transformer's with its species added
PREDICTOR_OUTPUTS = [("label", "INT64", [2]), ("probabilities", "FP32", [2, 3])]
TRANSFORMER_OUTPUTS = [*PREDICTOR_OUTPUTS, ("species", "BYTES", [2])]
CURL_LINE = re.compile(r"^\s+(?:try|or):\s+(curl .*)$", re.MULTILINE)
METRICS_LINE = re.compile(r"^servelane: gateway metrics \(Prometheus\): (http://\S+)$", re.MULTILINE)


async def test_make_run_stack_end_to_end(servelane_up):
    up = servelane_up(ROOT / "examples")
    output = up.process.wait_output("  or:  curl", 10)  # printed just after "ready in"
    curls = [shlex.split(line) for line in CURL_LINE.findall(output)]
    assert len(curls) == 2 and "Host: sklearn-iris.default.example.com" in curls[1], output
    for curl in curls:
        await _run_printed_curl(curl)
    metrics = up.process.wait_output("servelane: gateway metrics", 10)
    (metrics_url,) = METRICS_LINE.findall(metrics)
    assert metrics_url == f"http://127.0.0.1:{up.metrics_port}/metrics", metrics
    await _scrape(metrics_url)

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

        # the README's V2 JSON curl, as curl -d sends it (a form content type): the transformer adds "species"
        v2 = b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[6.8,2.8,4.8,1.4]}]}'
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        async with http.post("/v2/models/sklearn-iris/infer", data=v2, headers=form) as response:
            assert response.status == 200, await response.text()
            outputs = {o["name"]: o["data"] for o in (await response.json())["outputs"]}
            assert (outputs["label"], outputs["species"]) == ([1], ["versicolor"])

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
    for text in ("sklearn-iris-predictor-00001", "sklearn-iris-transformer-00001", "100%", "1/1", "IN-FLIGHT"):
        assert text in table
    services = up.status()["services"]
    replicas = [x for s in services for revisions in s["components"].values() for r in revisions for x in r["replicas"]]
    # read from the real queue-proxies' stats ports: nothing in flight now, an average over the last second
    assert [(x["in_flight"], type(x["avg_concurrency"])) for x in replicas] == [(0, float)] * len(replicas) != []

    await _gateway_that_dies_is_restarted(up)
    await _scrape(metrics_url)  # the restarted gateway serves its metrics where `up` said

    code, still_alive = up.stop()
    assert code == 0, up.process.output()
    assert still_alive == []
    assert "stopped" in up.process.output()


def _tritonclient_http(port: int) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        x = httpclient.InferInput("input", [2, 4], "FP32")
        x.set_data_from_numpy(IRIS, binary_data=True)
        for headers, expected in ((None, TRANSFORMER_OUTPUTS), ({"Host": PREDICTOR_HOST}, PREDICTOR_OUTPUTS)):
            result = client.infer("sklearn-iris", [x], headers=headers)  # every output
            outputs = [(o["name"], o["datatype"], o["shape"]) for o in result.get_response()["outputs"]]
            assert (outputs, result.as_numpy("label").tolist()) == (expected, [1, 1]), headers
        label = httpclient.InferRequestedOutput("label")
        result = client.infer("sklearn-iris", [x], outputs=[label], headers={"Host": PREDICTOR_HOST})
        assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    finally:
        client.close()


async def _tritonclient_grpc(port: int) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        x = grpcclient.InferInput("input", [2, 4], "FP32")
        x.set_data_from_numpy(IRIS)
        alone = {"x-servelane-host": PREDICTOR_HOST}
        for headers, expected in ((None, TRANSFORMER_OUTPUTS), (alone, PREDICTOR_OUTPUTS)):
            result = await client.infer("sklearn-iris", [x], headers=headers)
            outputs = [(o.name, o.datatype, list(o.shape)) for o in result.get_response().outputs]
            assert (outputs, result.as_numpy("label").tolist()) == (expected, [1, 1]), headers
        through = await client.infer("sklearn-iris", [x])
        assert through.as_numpy("species").tolist() == [b"versicolor", b"versicolor"]
    finally:
        await client.close()
    # the channel's authority names the predictor, as a KServe user's client behind an ingress does
    client = grpcclient.InferenceServerClient(
        f"127.0.0.1:{port}", channel_args=[("grpc.default_authority", PREDICTOR_HOST)]
    )
    try:
        result = await client.infer("sklearn-iris", [x])
        outputs = [(o.name, o.datatype, list(o.shape)) for o in result.get_response().outputs]
        assert (outputs, result.as_numpy("label").tolist()) == (PREDICTOR_OUTPUTS, [1, 1])
    finally:
        await client.close()


async def _run_printed_curl(curl: list[str]) -> None:
    """The request a printed ``curl -s URL [-H 'Name: value'] [-d BODY]`` makes, sent with aiohttp, and the curl
    itself when the machine has one: both answer the example's species."""
    assert curl[0] == "curl", curl
    url, headers, body, args = None, {}, None, iter(curl[1:])
    for arg in args:
        if arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            body = next(args).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")  # curl's, for -d
        elif arg != "-s":
            assert url is None and not arg.startswith("-"), f"{arg!r}: a curl argument this test does not know"
            url = arg
    assert url is not None, curl
    expected = {"predictions": ["versicolor", "versicolor"]}
    async with aiohttp.ClientSession() as http:
        async with http.request("POST" if body else "GET", url, headers=headers, data=body) as response:
            assert (response.status, await response.json()) == (200, expected), curl
    if shutil.which("curl") is None:
        return  # no curl binary here: the request it prints was checked above
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # the machine's proxy is not the test's
    process = await asyncio.create_subprocess_exec(*curl, stdout=asyncio.subprocess.PIPE, env=env)
    stdout, _ = await asyncio.wait_for(process.communicate(), 30)
    assert (process.returncode, json.loads(stdout)) == (0, expected), curl


async def _scrape(url: str) -> None:
    """The printed metrics URL answers Prometheus text with the gateway's own series."""
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200, url
        assert "gateway_routing_state_version" in await response.text()


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
