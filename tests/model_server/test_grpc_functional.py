"""The gRPC edge over loopback: a real grpc.aio server on a free port, talked to with tritonclient.grpc (the sync
client, run in a thread) and, for messages tritonclient would never send, a raw stub of our generated module."""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from model_server.config import MiB, ModelServerConfig
from model_server.dataplane import DataPlane
from model_server.grpc_gen import inference_pb2 as pb
from model_server.grpc_gen import inference_pb2_grpc as pb_grpc
from model_server.grpc_server import add_port, build_grpc_server
from model_server.metrics import ModelServerMetrics
from model_server.model import Model, RequestContext
from model_server.repository import ModelRepository
from model_server.types import InferRequest, InferResponse, Tensor
from tests.models import build_add, build_identity_multi


class Broken(Model):
    async def predict(self, payload: Any, context: RequestContext) -> Any:
        raise RuntimeError("secret detail that must not reach the client")


class EchoHeader(Model):
    async def predict(self, payload: InferRequest, context: RequestContext) -> InferResponse:
        value = np.array([context.headers.get("x-trace", "").encode()], dtype=np.object_)
        return InferResponse(self.name, [Tensor("trace", "BYTES", (1,), value)], id="")


class Server:
    def __init__(self, address: str, dataplane: DataPlane) -> None:
        self.address = address
        self.dataplane = dataplane

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One tritonclient.grpc call, in a thread so the server's loop keeps running."""

        def run() -> Any:
            client = triton.InferenceServerClient(self.address)
            try:
                return getattr(client, method)(*args, **kwargs)
            finally:
                client.close()

        return await asyncio.to_thread(run)

    def requests_counted(self, model: str, code: int) -> float:
        value = self.dataplane.metrics.registry.get_sample_value(
            "model_server_requests_total", {"model_name": model, "protocol": "grpc", "code": str(code)}
        )
        return value or 0.0


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Factory: ``await start(**config)`` serves the test models (multi, add, and three python models)."""
    build_identity_multi(tmp_path / "multi" / "1" / "model.onnx")
    build_add(tmp_path / "add" / "1" / "model.onnx")
    repository = ModelRepository(tmp_path)
    await repository.load_all()
    for model in (Broken("broken"), EchoHeader("echo")):
        model.load()
        repository.register(model)
    repository.register(Model("sleepy"))  # never loaded: registered, not ready
    servers: list[grpc.aio.Server] = []

    async def _start(**overrides: Any) -> Server:
        dataplane = DataPlane(repository, ModelServerMetrics())
        server = build_grpc_server(dataplane, ModelServerConfig(model_repository=tmp_path, **overrides))
        port = add_port(server, "127.0.0.1", 0)
        await server.start()
        servers.append(server)
        return Server(f"127.0.0.1:{port}", dataplane)

    yield _start
    for server in servers:
        await server.stop(None)
    await repository.close()


@pytest.fixture
async def server(start: Callable[..., Awaitable[Server]]) -> Server:
    return await start()


@pytest.fixture
async def stub(server: Server) -> AsyncIterator[pb_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _add_input(rows: int) -> triton.InferInput:
    return _input("x", np.arange(rows * 4, dtype=np.float32).reshape(rows, 4), "FP32")


def _status(excinfo: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(excinfo.value.status())


# -- health and metadata -----------------------------------------------------------------------------------------
async def test_server_live_ready_and_metadata(server: Server) -> None:
    # "sleepy" is registered but not ready, so the server as a whole is not ready.
    assert await server.call("is_server_live") is True
    assert await server.call("is_server_ready") is False
    metadata = await server.call("get_server_metadata", as_json=True)
    expected = server.dataplane.server_metadata()
    assert (metadata["name"], metadata["version"], metadata["extensions"]) == (
        expected["name"], expected["version"], expected["extensions"],
    )


async def test_model_ready(server: Server) -> None:
    assert await server.call("is_model_ready", "multi") is True
    assert await server.call("is_model_ready", "sleepy") is False
    with pytest.raises(InferenceServerException) as excinfo:
        await server.call("is_model_ready", "nope")
    assert _status(excinfo) == "StatusCode.NOT_FOUND"


async def test_model_metadata(server: Server) -> None:
    metadata = await server.call("get_model_metadata", "multi", as_json=True)
    assert metadata["name"] == "multi"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("a", "FP32", ["-1", "3"]), ("b", "INT64", ["-1", "3"]),
        ("c", "BOOL", ["-1", "3"]), ("s", "BYTES", ["-1", "1"]),
    ]
    assert [o["name"] for o in metadata["outputs"]] == ["a2", "b1", "nc", "s_out"]


# -- inference ---------------------------------------------------------------------------------------------------
async def test_multi_type_round_trip(server: Server) -> None:
    a = np.array([[1.5, -2.0, 0.25], [3.0, 4.0, 5.0]], dtype=np.float32)
    b = np.array([[1, -2, 2**40], [0, 7, -9]], dtype=np.int64)
    c = np.array([[True, False, True], [False, False, True]])
    s = np.array([[b"hello"], ["snowman \u2603".encode()]], dtype=np.object_)
    inputs = [_input("a", a, "FP32"), _input("b", b, "INT64"), _input("c", c, "BOOL"), _input("s", s, "BYTES")]

    result = await server.call("infer", "multi", inputs, request_id="req-1")

    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-1", "multi", "1")
    assert [o.name for o in response.outputs] == ["a2", "b1", "nc", "s_out"]
    assert [o.datatype for o in response.outputs] == ["FP32", "INT64", "BOOL", "BYTES"]
    assert len(response.raw_output_contents) == 4
    np.testing.assert_array_equal(result.as_numpy("a2"), a * 2)
    np.testing.assert_array_equal(result.as_numpy("b1"), b + 1)
    np.testing.assert_array_equal(result.as_numpy("nc"), ~c)
    assert result.as_numpy("s_out").tolist() == s.tolist()
    assert server.requests_counted("multi", 0) == 1


async def test_requested_outputs_come_back_in_request_order(server: Server) -> None:
    a = np.ones((1, 3), dtype=np.float32)
    inputs = [
        _input("a", a, "FP32"),
        _input("b", np.zeros((1, 3), dtype=np.int64), "INT64"),
        _input("c", np.zeros((1, 3), dtype=bool), "BOOL"),
        _input("s", np.array([[b"x"]], dtype=np.object_), "BYTES"),
    ]
    outputs = [triton.InferRequestedOutput("nc"), triton.InferRequestedOutput("a2")]

    result = await server.call("infer", "multi", inputs, outputs=outputs)

    assert [o.name for o in result.get_response().outputs] == ["nc", "a2"]
    np.testing.assert_array_equal(result.as_numpy("nc"), np.ones((1, 3), dtype=bool))
    np.testing.assert_array_equal(result.as_numpy("a2"), a * 2)
    assert result.get_response().id  # a request without an id still gets one


async def test_typed_contents_are_accepted_and_answered_raw(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="add", id="typed")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])

    response = await stub.ModelInfer(request)

    assert response.id == "typed"
    assert not response.outputs[0].HasField("contents")
    data = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(list(response.outputs[0].shape))
    np.testing.assert_array_equal(data, [[2, 3, 4, 5]])


async def test_call_metadata_reaches_the_model_as_headers(server: Server) -> None:
    inputs = [_input("unused", np.zeros(1, dtype=np.float32), "FP32")]
    result = await server.call("infer", "echo", inputs, headers={"x-trace": "abc-123"})
    assert result.as_numpy("trace").tolist() == [b"abc-123"]


async def test_unknown_model_is_not_found(server: Server) -> None:
    with pytest.raises(InferenceServerException) as excinfo:
        await server.call("infer", "nope", [_add_input(1)])
    assert _status(excinfo) == "StatusCode.NOT_FOUND"
    assert server.requests_counted("_unknown", grpc.StatusCode.NOT_FOUND.value[0]) == 1


async def test_model_not_ready_is_unavailable(server: Server) -> None:
    with pytest.raises(InferenceServerException) as excinfo:
        await server.call("infer", "sleepy", [_add_input(1)])
    assert _status(excinfo) == "StatusCode.UNAVAILABLE"


async def test_unexpected_error_is_internal_without_details(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="model_server.grpc_server"):
        with pytest.raises(InferenceServerException) as excinfo:
            await server.call("infer", "broken", [_add_input(1)])
    assert _status(excinfo) == "StatusCode.INTERNAL"
    assert excinfo.value.message() == "Internal server error"
    assert any(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in caplog.records)


def _malformed(case: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="add")
    x = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    raw = np.zeros(4, dtype=np.float32).tobytes()
    if case == "raw count":
        request.raw_input_contents.extend([raw, raw])
    elif case == "contents and raw":
        request.raw_input_contents.append(raw)
        x.contents.fp32_contents.extend([0, 0, 0, 0])
    elif case == "raw length":
        request.raw_input_contents.append(raw[:-4])
    elif case == "typed count":
        x.contents.fp32_contents.extend([0, 0, 0])
    elif case == "typed FP16":
        x.datatype = "FP16"
        x.contents.fp32_contents.extend([0, 0, 0, 0])
    elif case == "negative dim":
        del x.shape[:]
        x.shape.extend([-1, 4])
        request.raw_input_contents.append(raw)
    return request


@pytest.mark.parametrize(
    "case", ["raw count", "contents and raw", "raw length", "typed count", "typed FP16", "negative dim"]
)
async def test_malformed_request_is_invalid_argument(stub: pb_grpc.GRPCInferenceServiceStub, case: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await stub.ModelInfer(_malformed(case))
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT, excinfo.value.details()


async def test_message_size_limit(start: Callable[..., Awaitable[Server]]) -> None:
    default = await start()
    # Over gRPC's own 4 MiB default, under our 8 MiB: the configured limit is the one in force.
    result = await default.call("infer", "add", [_add_input(6 * MiB // 16)])
    assert result.as_numpy("y").shape == (6 * MiB // 16, 4)
    with pytest.raises(InferenceServerException) as excinfo:
        await default.call("infer", "add", [_add_input(8 * MiB // 16 + 1)])
    assert _status(excinfo) == "StatusCode.RESOURCE_EXHAUSTED"

    small = await start(grpc_max_message_bytes=MiB)
    with pytest.raises(InferenceServerException) as excinfo:
        await small.call("infer", "add", [_add_input(MiB // 16 + 1)])
    assert _status(excinfo) == "StatusCode.RESOURCE_EXHAUSTED"


# -- repository --------------------------------------------------------------------------------------------------
async def test_repository_index_unload_and_load(server: Server) -> None:
    index = await server.call("get_model_repository_index", as_json=True)
    assert {(m["name"], m.get("version"), m["state"]) for m in index["models"]} == {
        ("add", "1", "READY"), ("multi", "1", "READY"),  # from the repository folder
        ("broken", "1", "READY"), ("echo", "1", "READY"), ("sleepy", "1", "UNAVAILABLE"),  # registered objects
    }

    await server.call("unload_model", "add")
    with pytest.raises(InferenceServerException) as excinfo:
        await server.call("is_model_ready", "add")
    assert _status(excinfo) == "StatusCode.NOT_FOUND"
    index = await server.call("get_model_repository_index", as_json=True)
    assert {"name": "add", "state": "UNAVAILABLE", "reason": "unloaded"} in index["models"]

    await server.call("load_model", "add")
    assert await server.call("is_model_ready", "add") is True
    result = await server.call("infer", "add", [_add_input(1)])
    np.testing.assert_array_equal(result.as_numpy("y"), [[1, 2, 3, 4]])


async def test_load_unknown_model_is_not_found(server: Server) -> None:
    with pytest.raises(InferenceServerException) as excinfo:
        await server.call("load_model", "nope")
    assert _status(excinfo) == "StatusCode.NOT_FOUND"


async def test_load_with_config_override_is_unimplemented(server: Server) -> None:
    with pytest.raises(InferenceServerException) as excinfo:
        await server.call("load_model", "add", config='{"max_batch_size": 4}')
    assert _status(excinfo) == "StatusCode.UNIMPLEMENTED"


# -- streaming ---------------------------------------------------------------------------------------------------
def _stream(address: str, requests: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    """Send (model, id) requests on one stream; return ("ok", result) or ("error", exception) per reply."""
    replies: queue.Queue[tuple[str, Any]] = queue.Queue()
    client = triton.InferenceServerClient(address)
    try:
        client.start_stream(lambda result, error: replies.put(("error", error) if error else ("ok", result)))
        for model, request_id in requests:
            client.async_stream_infer(model, [_add_input(1)], request_id=request_id)
        collected = [replies.get(timeout=10) for _ in requests]
        client.stop_stream()
    finally:
        client.close()
    return collected


async def test_stream_infer_reports_errors_and_goes_on(server: Server) -> None:
    replies = await asyncio.to_thread(_stream, server.address, [("add", "r1"), ("nope", "r2"), ("add", "r3")])

    assert [kind for kind, _ in replies] == ["ok", "error", "ok"]
    assert [replies[0][1].get_response().id, replies[2][1].get_response().id] == ["r1", "r3"]
    np.testing.assert_array_equal(replies[2][1].as_numpy("y"), [[1, 2, 3, 4]])
    assert "nope" in replies[1][1].message()
    assert server.requests_counted("add", 0) == 2
