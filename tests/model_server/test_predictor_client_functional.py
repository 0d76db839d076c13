"""The transformer's predictor client over loopback: against a real model server (v2 REST with the binary extension,
grpc-v2, v1) and against a scripted aiohttp predictor for what a real one rarely does (odd errors, no answer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from aiohttp import web
from multidict import CIMultiDict

from common.errors import InferenceError, UpstreamError, UpstreamTimeout
from common.lifecycle import bound_port, start_http
from model_server import codec_grpc, codec_rest
from model_server.predictor_client import PredictorClient, PredictorError, RestPredictor, build_predictor, forwarded
from model_server.types import InferRequest, InferResponse, RequestedOutput, Tensor
from tests.harness import free_port
from tests.models import build_add, build_identity_multi

B3 = {"X-B3-TraceId": "463ac35c9f6413ad48485a3953bb6124", "X-B3-SpanId": "a2fb4a1d1a96d312",
      "X-B3-ParentSpanId": "0020000000000001", "X-B3-Sampled": "1", "X-B3-Flags": "1",
      "B3": "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1-0020000000000001"}
HEADERS = {"X-Request-Id": "req-7", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
           "tracestate": "vendor=1", "Authorization": "Bearer t0ken", "Cookie": "secret=1", "X-Other": "no",
           "Baggage": "userId=alice,isProduction=false", **B3}
FORWARDED = ["authorization: Bearer t0ken", "b3: 463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1-0020000000000001",
             "baggage: userId=alice,isProduction=false",
             "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate: vendor=1",
             "x-b3-flags: 1", "x-b3-parentspanid: 0020000000000001", "x-b3-sampled: 1", "x-b3-spanid: a2fb4a1d1a96d312",
             "x-b3-traceid: 463ac35c9f6413ad48485a3953bb6124", "x-request-id: req-7"]


@pytest.fixture
async def predictor_server(start_model_server, tmp_path: Path):
    root = tmp_path / "models"
    build_identity_multi(root / "multi" / "1" / "model.onnx")
    build_add(root / "add" / "1" / "model.onnx", 1.0)
    (root / "echo").mkdir()
    (root / "echo" / "config.yaml").write_text("model_class: tests.model_server.custom_models:EchoHeaders\n")
    return await start_model_server(root)


@pytest.fixture
async def connect() -> AsyncIterator:
    clients: list[PredictorClient] = []

    async def make(host: str, protocol: str, timeout: float = 10.0, authority: str | None = None) -> PredictorClient:
        client = build_predictor(host, protocol, timeout, authority=authority)
        await client.start()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def multi_request(outputs: list[str] | None = None, text: bytes = "snow ☃".encode()) -> InferRequest:
    a = np.array([[1.5, -2, 3]], dtype=np.float32)
    s = np.array([[text]], dtype=np.object_)
    b = np.array([[1, 2, 3]], dtype=np.int64)
    c = np.array([[True, False, True]])
    tensors = [Tensor("a", "FP32", a.shape, a), Tensor("b", "INT64", b.shape, b), Tensor("c", "BOOL", c.shape, c),
               Tensor("s", "BYTES", s.shape, s)]
    return InferRequest("multi", tensors, id="m-1", outputs=[RequestedOutput(n) for n in outputs] if outputs else None)


@pytest.mark.parametrize("protocol", ["v2", "grpc-v2"])
async def test_infer_round_trips_tensors_and_requested_outputs(predictor_server, connect, protocol):
    port = predictor_server.http_port if protocol == "v2" else predictor_server.grpc_port
    client = await connect(f"127.0.0.1:{port}", protocol)
    response = await client.infer(multi_request(["s_out", "a2"]), {})
    assert [t.name for t in response.outputs] == ["s_out", "a2"]
    assert response.id == "m-1"
    assert response.output("s_out").data.tolist() == [["snow ☃".encode()]]
    np.testing.assert_array_equal(response.output("a2").data, np.array([[3, -4, 6]], dtype=np.float32))
    everything = await client.infer(multi_request(), {})
    assert [t.name for t in everything.outputs] == ["a2", "b1", "nc", "s_out"]
    np.testing.assert_array_equal(everything.output("nc").data, [[False, True, False]])


async def test_concurrent_and_large_v2_calls_share_the_pool_and_each_gets_its_own_answer(predictor_server, connect):
    client = await connect(f"127.0.0.1:{predictor_server.http_port}", "v2")

    def add_request(x: np.ndarray) -> InferRequest:
        return InferRequest("add", [Tensor("x", "FP32", x.shape, x)])

    rows = [np.full((1, 4), i, dtype=np.float32) for i in range(40)]
    answers = await asyncio.gather(*(client.infer(add_request(x), {}) for x in rows))
    for x, answer in zip(rows, answers):
        np.testing.assert_array_equal(answer.output("y").data, x + 1)
    big = np.arange(4 * 250_000, dtype=np.float32).reshape(-1, 4)  # 4 MB each way: read in many pieces
    np.testing.assert_array_equal((await client.infer(add_request(big), {})).output("y").data, big + 1)


@pytest.mark.parametrize("protocol", ["v2", "grpc-v2"])
async def test_only_the_tracing_b3_baggage_and_auth_headers_are_forwarded(predictor_server, connect, protocol):
    port = predictor_server.http_port if protocol == "v2" else predictor_server.grpc_port
    client = await connect(f"127.0.0.1:{port}", protocol)
    x = np.array([1.0], dtype=np.float32)
    response = await client.infer(InferRequest("echo", [Tensor("x", "FP32", (1,), x)]), HEADERS)
    assert [v.decode() for v in response.output("headers").data] == FORWARDED


@pytest.mark.parametrize("protocol", ["v2", "grpc-v2"])
async def test_predictor_errors_keep_their_status_and_message(predictor_server, connect, protocol):
    port = predictor_server.http_port if protocol == "v2" else predictor_server.grpc_port
    client = await connect(f"127.0.0.1:{port}", protocol)
    with pytest.raises(PredictorError) as raised:
        await client.infer(InferRequest("nope", multi_request().inputs), {})
    assert (raised.value.http_status, raised.value.grpc_code) == (404, grpc.StatusCode.NOT_FOUND)
    assert raised.value.message == "Model with name nope does not exist."
    x = np.zeros((1, 3), np.float32)
    with pytest.raises(PredictorError) as raised:
        await client.infer(InferRequest("add", [Tensor("x", "FP32", x.shape, x)]), {})
    assert (raised.value.http_status, raised.value.grpc_code) == (400, grpc.StatusCode.INVALID_ARGUMENT)
    assert raised.value.message == "input 'x' has shape [1, 3], model 'add' expects [-1, 4]"


@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc-v2"])
async def test_readiness_and_metadata(predictor_server, connect, protocol):
    port = predictor_server.grpc_port if protocol == "grpc-v2" else predictor_server.http_port
    client = await connect(f"127.0.0.1:{port}", protocol)
    assert await client.ready("add") is True
    assert await client.ready("nope") is False
    metadata = await client.metadata("add")
    if protocol == "v1":
        assert metadata is None
    else:
        assert [(s.name, s.datatype, s.shape) for s in metadata.inputs] == [("x", "FP32", (-1, 4))]
    down = await connect(f"127.0.0.1:{free_port()}", protocol)
    assert await down.ready("add") is False


async def test_v1_forwards_json_and_refuses_v2_payloads(predictor_server, connect):
    client = await connect(f"127.0.0.1:{predictor_server.http_port}", "v1")
    assert await client.forward("add", {"instances": [[1, 1, 1, 1]]}, HEADERS) == {"predictions": [[2, 2, 2, 2]]}
    with pytest.raises(InferenceError, match="preprocess must return a V1 JSON object"):
        await client.forward("add", multi_request(), {})
    v2 = await connect(f"127.0.0.1:{predictor_server.http_port}", "v2")
    with pytest.raises(InferenceError, match="preprocess must return an InferRequest"):
        await v2.forward("add", {"instances": [[1, 1, 1, 1]]}, {})


# -- a scripted predictor ------------------------------------------------------------------------------------------
@pytest.fixture
async def scripted() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A predictor whose model name says what it does: error, detail, text, host (the Host it saw, as an error),
    garbage, or slow (until the gate)."""
    gate = asyncio.Event()

    async def infer(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "slow":
            await gate.wait()
        if name == "error":
            return web.json_response({"error": "teapot says no"}, status=418)
        if name == "detail":
            return web.json_response({"detail": "kserve style"}, status=400)
        if name == "host":
            return web.json_response({"error": request.headers.get("Host")}, status=400)
        if name == "text":
            return web.Response(text="overloaded", status=503)
        return web.Response(body=b"{not json", headers={codec_rest.IHCL: "9"})

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    runner = await start_http(app, "127.0.0.1", 0, shutdown_timeout=1)
    try:
        yield f"127.0.0.1:{bound_port(runner)}", gate
    finally:
        gate.set()
        await runner.cleanup()


def tiny(name: str) -> InferRequest:
    return InferRequest(name, [Tensor("x", "FP32", (1,), np.ones(1, np.float32))])


async def test_odd_predictor_errors_map_to_a_status_each(scripted, connect):
    host, _ = scripted
    client = await connect(host, "v2")
    expected = {"error": (418, grpc.StatusCode.INVALID_ARGUMENT, "teapot says no"),
                "detail": (400, grpc.StatusCode.INVALID_ARGUMENT, "kserve style"),
                "text": (503, grpc.StatusCode.UNAVAILABLE, "overloaded")}
    for name, (status, code, message) in expected.items():
        with pytest.raises(PredictorError) as raised:
            await client.infer(tiny(name), {})
        assert (raised.value.http_status, raised.value.grpc_code, raised.value.message) == (status, code, message)
    with pytest.raises(UpstreamError, match="unreadable response"):
        await client.infer(tiny("garbage"), {})


async def test_calls_beyond_the_connection_limit_wait_their_turn():
    """A burst of calls never opens more than ``connections`` sockets to the predictor; the rest wait, and all land."""
    running, most, gate = 0, 0, asyncio.Event()

    async def infer(request: web.Request) -> web.Response:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1
        return web.json_response({"error": "held"}, status=400)

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    runner = await start_http(app, "127.0.0.1", 0, shutdown_timeout=1)
    client = RestPredictor(f"127.0.0.1:{bound_port(runner)}", 10.0, connections=3)
    await client.start()
    try:
        calls = [asyncio.create_task(client.infer(tiny("x"), {})) for _ in range(10)]
        for _ in range(100):
            if running == 3:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert running == 3 and not any(call.done() for call in calls)
        gate.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, PredictorError) and o.message == "held" for o in outcomes) and most == 3
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_restarted_predictor_is_reached_again_and_a_garbled_answer_is_502(connect):
    """A predictor replica restarting between calls leaves dead connections in the pool: the next call goes through
    on a new one. An answer that is not HTTP is 502, and the call after it is fine."""
    def refusal(message: bytes) -> bytes:
        body = b'{"error": "%b"}' % message
        return b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)

    replies = iter([refusal(b"one"), b"this is not HTTP\r\n\r\n", refusal(b"three")])

    connections: list[asyncio.StreamWriter] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                writer.write(next(replies))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(answer, "127.0.0.1", port)
    client = await connect(f"127.0.0.1:{port}", "v2")
    with pytest.raises(PredictorError, match="one"):
        await client.infer(tiny("x"), {})
    server.close()
    await server.wait_closed()
    for writer in connections:  # the kept-alive connection goes with the old server, as in a restart
        writer.close()
    await asyncio.sleep(0.05)
    server = await asyncio.start_server(answer, "127.0.0.1", port)
    try:
        with pytest.raises(UpstreamError, match="failed") as raised:
            await client.infer(tiny("x"), {})
        assert raised.value.http_status == 502
        with pytest.raises(PredictorError, match="three"):
            await client.infer(tiny("x"), {})
    finally:
        server.close()
        await server.wait_closed()


async def test_authority_is_the_host_predictor_calls_carry(scripted, connect):
    """Behind a gateway that routes by host, the transformer names the predictor's host, not the gateway's."""
    host, _ = scripted
    for authority, expected in ((None, host), ("sklearn-iris-predictor.default.example.com",) * 2):
        client = await connect(host, "v2", authority=authority)
        with pytest.raises(PredictorError) as raised:
            await client.infer(tiny("host"), {})
        assert raised.value.message == expected


async def test_no_answer_within_the_timeout_is_504_and_no_connection_502(scripted, connect):
    host, _ = scripted
    client = await connect(host, "v2", timeout=0.2)
    with pytest.raises(UpstreamTimeout, match="did not answer within 0.2 s") as raised:
        await client.infer(tiny("slow"), {})
    assert raised.value.http_status == 504
    refused = await connect(f"127.0.0.1:{free_port()}", "v2")
    with pytest.raises(UpstreamError) as raised:
        await refused.infer(tiny("x"), {})
    assert raised.value.http_status == 502


# -- without sockets -----------------------------------------------------------------------------------------------
def test_repeated_list_headers_are_joined_and_others_keep_their_last_field():
    """A REST request's headers are a multi-dict: W3C lets baggage and tracestate arrive as several fields."""
    headers = CIMultiDict([("Baggage", "a=1"), ("tracestate", "x=1"), ("baggage", "b=2"), ("Tracestate", "y=2"),
                           ("X-Request-Id", "first"), ("x-request-id", "second"), ("Cookie", "no")])
    assert forwarded(headers) == {"baggage": "a=1, b=2", "tracestate": "x=1, y=2", "x-request-id": "second"}


def test_rest_client_codec_is_the_inverse_of_the_server_codec():
    request = multi_request(["s_out"], text=b"\xff\x00 not utf-8")
    body, headers = codec_rest.encode_request(request)
    decoded = codec_rest.decode_request(body, headers[codec_rest.IHCL], "multi", None)
    assert [(t.name, t.datatype, t.shape) for t in decoded.inputs] == [(t.name, t.datatype, t.shape)
                                                                       for t in request.inputs]
    for ours, theirs in zip(request.inputs, decoded.inputs):
        assert ours.data.tolist() == theirs.data.tolist()
    assert decoded.parameters == {"binary_data_output": True}
    response = InferResponse("multi", [Tensor("s_out", "BYTES", (1, 1), request.inputs[3].data)], id="m-1")
    payload, out_headers = codec_rest.encode_response(response, decoded)
    back = codec_rest.decode_response(payload, out_headers.get(codec_rest.IHCL))
    assert back.output("s_out").data.tolist() == [[b"\xff\x00 not utf-8"]]


def test_grpc_client_codec_is_the_inverse_of_the_server_codec():
    request = multi_request(["a2"], text=b"\xff\x00 not utf-8")
    decoded = codec_grpc.decode_request(codec_grpc.encode_request(request))
    assert decoded.id == "m-1" and [o.name for o in decoded.outputs] == ["a2"]
    assert decoded.input("s").data.tolist() == [[b"\xff\x00 not utf-8"]]
    response = InferResponse("multi", [Tensor("a2", "FP32", (1, 3), request.inputs[0].data * 2)], id="m-1")
    back = codec_grpc.decode_response(codec_grpc.encode_response(response))
    np.testing.assert_array_equal(back.output("a2").data, request.inputs[0].data * 2)


def test_the_grpc_route_header_is_the_one_the_gateway_reads():
    from gateway.grpc_routes import HOST_HEADER
    from model_server.predictor_client import ROUTE_HEADER

    assert ROUTE_HEADER == HOST_HEADER
