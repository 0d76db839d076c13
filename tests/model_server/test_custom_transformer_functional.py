"""A custom transformer class in front of a custom predictor class, both real processes served with --model-class:
what each predictor protocol forwards (only the tracing and auth headers), the predictor's V1 errors passed back
with its status and message, and the grpc-v2 call's timeout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.model_server.served import Served

pytestmark = pytest.mark.timeout(60)

CLASSES = "tests.model_server.custom_models"
HEADERS = {"X-Request-Id": "req-7", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
           "tracestate": "vendor=1", "Authorization": "Bearer t0ken", "Cookie": "secret=1", "X-Custom": "no"}
FORWARDED = ["authorization: Bearer t0ken", "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
             "tracestate: vendor=1", "x-request-id: req-7"]
TIMEOUT = 1.0  # the grpc-v2 transformer's --predictor-timeout


def relay(predictor: Served, protocol: str, name: str = "echo", *extra: str) -> Served:
    port = predictor.grpc if protocol == "grpc-v2" else predictor.http
    return Served("--model-class", f"{CLASSES}:Relay", "--model-name", name, "--predictor-host",
                  f"127.0.0.1:{port}", "--predictor-protocol", protocol, *extra)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Served]]:
    """The echo predictor and a transformer per protocol (the grpc-v2 one with a short timeout), plus a v1
    transformer for a model the predictor lacks; all started at once, then awaited."""
    predictor = Served("--model-class", f"{CLASSES}:EchoHeaders", "--model-name", "echo")
    started = {"predictor": predictor, "v1": relay(predictor, "v1"), "v2": relay(predictor, "v2"),
               "grpc-v2": relay(predictor, "grpc-v2", "echo", "--predictor-timeout", str(TIMEOUT)),
               "ghost": relay(predictor, "v1", "ghost")}
    try:
        yield {key: served.wait() for key, served in started.items()}
    finally:
        for served in started.values():
            assert served.proc.stop() == 0, served.proc.output()


def v2_body(name: str = "x") -> dict:
    return {"inputs": [{"name": name, "shape": [1], "datatype": "FP32", "data": [1.0]}]}


@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc-v2"])
async def test_only_the_tracing_and_auth_headers_reach_the_real_predictor(servers, protocol: str):
    async with aiohttp.ClientSession(servers[protocol].url()) as http:
        if protocol == "v1":
            async with http.post("/v1/models/echo:predict", json={"instances": [1]}, headers=HEADERS) as r:
                body = await r.json()
                assert r.status == 200, body
            seen = body["predictions"]
        else:
            async with http.post("/v2/models/echo/infer", json=v2_body(), headers=HEADERS) as r:
                body = await r.json()
                assert r.status == 200, body
            seen = body["outputs"][0]["data"]
    assert seen == FORWARDED  # and not cookie, nor x-custom


@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc-v2"])
async def test_b3_and_baggage_reach_the_real_predictor_and_repeated_baggage_fields_are_joined(servers, protocol):
    """Through a real transformer process: B3 (both forms) and W3C baggage, sent as two fields, as a proxy or a
    mesh may (both spelt alike: aiohttp's client keeps only the last of names that differ in case)."""
    headers = CIMultiDict([("X-B3-TraceId", "463ac35c9f6413ad"), ("X-B3-SpanId", "a2fb4a1d1a96d312"),
                           ("X-B3-ParentSpanId", "0020000000000001"), ("X-B3-Sampled", "1"), ("X-B3-Flags", "1"),
                           ("b3", "463ac35c9f6413ad-a2fb4a1d1a96d312-1"), ("baggage", "userId=alice"),
                           ("baggage", "isProduction=false")])
    path, body = ("/v1/models/echo:predict", {"instances": [1]}) if protocol == "v1" else (
        "/v2/models/echo/infer", v2_body())
    async with aiohttp.ClientSession(servers[protocol].url()) as http:
        async with http.post(path, json=body, headers=headers) as r:
            answer = await r.json()
            assert r.status == 200, answer
    seen = answer["predictions"] if protocol == "v1" else answer["outputs"][0]["data"]
    assert seen == ["b3: 463ac35c9f6413ad-a2fb4a1d1a96d312-1", "baggage: userId=alice, isProduction=false",
                    "x-b3-flags: 1", "x-b3-parentspanid: 0020000000000001", "x-b3-sampled: 1",
                    "x-b3-spanid: a2fb4a1d1a96d312", "x-b3-traceid: 463ac35c9f6413ad"]


async def test_the_v1_predictors_errors_come_back_with_its_status_and_message(servers):
    async with aiohttp.ClientSession() as http:
        async with http.post(servers["v1"].url("/v1/models/echo:predict"), json={"instances": []}) as r:
            assert (r.status, await r.json()) == (400, {"error": "echo needs at least one instance"})
        async with http.post(servers["ghost"].url("/v1/models/ghost:predict"), json={"instances": [1]}) as r:
            assert r.status == 404
            assert (await r.json()) == {"error": "Model with name ghost does not exist."}  # the predictor's word


async def test_a_grpc_v2_predictor_too_slow_to_answer_is_504_within_the_timeout(servers):
    async with aiohttp.ClientSession(servers["grpc-v2"].url()) as http:
        started = time.monotonic()
        async with http.post("/v2/models/echo/infer", json=v2_body("stall")) as r:
            elapsed = time.monotonic() - started
            assert r.status == 504, await r.text()
            assert f"did not answer within {TIMEOUT:g} s" in (await r.json())["error"]
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 2.0
    async with aiohttp.ClientSession(servers["grpc-v2"].url()) as http:  # and the next call is fine
        async with http.post("/v2/models/echo/infer", json=v2_body()) as r:
            assert r.status == 200
