"""gRPC through the gateway over loopback: to a real model server routed by model name and by x-servelane-host,
streaming inference, the metadata the gateway adds, its own ServerLive/Ready/Metadata, NOT_FOUND for what matches
nothing, and channels closed once their endpoint left the routing state."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from gateway.app import Gateway
from gateway.grpc_front import PREFACE
from gateway.grpc_routes import HOST_HEADER, SERVICE
from gateway.state import RoutingState
from model_server.grpc_gen import inference_pb2 as pb
from tests.gateway.conftest import eventually
from tests.gateway.documents import endpoint

IRIS = np.array([[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]], dtype=np.float32)
INFER = "/inference.GRPCInferenceService/ModelInfer"


class Echo(grpc.GenericRpcHandler):
    """Any unary method: the request back, and the metadata it came with recorded."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None  # when set up, every call waits for it before answering

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.received.append({m.key: m.value for m in context.invocation_metadata()})
            if self.gate is not None:
                await self.gate.wait()
            return request

        return grpc.unary_unary_rpc_method_handler(echo)


@pytest.fixture
async def echo() -> AsyncIterator[tuple[Echo, str]]:
    handler, server = Echo(), grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield handler, f"127.0.0.1:{port}"
    await server.stop(None)


def document(model_server: Any, echo_address: str, version: int = 1) -> dict[str, Any]:
    def service(name: str, ns: str, model: str) -> dict[str, Any]:
        return {"name": name, "namespace": ns, "models": [model],
                "components": {"predictor": [{"revision": f"{name}-predictor-00001", "percent": 100}]}}  # fmt: skip

    def revision(name: str, ns: str, grpc_address: str) -> dict[str, Any]:
        return {"namespace": ns, "service": name, "component": "predictor", "timeout": 10,
                "endpoints": [endpoint("127.0.0.1:1", grpc_address)]}  # fmt: skip

    server = f"127.0.0.1:{model_server.grpc_port}"
    return {
        "version": version,
        "services": [service("iris", "default", "sklearn-iris"), service("echo", "test", "echo-model"),
                     service("down", "test", "down-model")],
        "revisions": {"iris-predictor-00001": revision("iris", "default", server),
                      "echo-predictor-00001": revision("echo", "test", echo_address),
                      "down-predictor-00001": revision("down", "test", "127.0.0.1:1")},
    }  # fmt: skip


@pytest.fixture
async def gateway(start_model_server, iris_repository, start_gateway, echo) -> Gateway:
    model_server = await start_model_server(iris_repository)
    gw = await start_gateway(document(model_server, echo[1]))
    gw.model_server = model_server  # type: ignore[attr-defined]
    return gw


def _input() -> triton.InferInput:
    tensor = triton.InferInput("input", list(IRIS.shape), "FP32")
    tensor.set_data_from_numpy(IRIS)
    return tensor


async def test_infer_routed_by_model_name_and_by_header(gateway: Gateway) -> None:
    client = triton_aio.InferenceServerClient(f"127.0.0.1:{gateway.ports['grpc']}")
    try:
        result = await client.infer("sklearn-iris", [_input()])
        assert result.as_numpy("label").tolist() == [1, 1]

        # the header wins over the model name: "down" is unreachable, so the call fails there
        with pytest.raises(InferenceServerException) as raised:
            await client.infer("sklearn-iris", [_input()], headers={"x-servelane-host": "down.test.example.com"})
        assert raised.value.status() == "StatusCode.UNAVAILABLE"
        assert raised.value.message() == "upstream unreachable: connection refused"

        # ... and to the model server, whichever model the request names
        host = {"x-servelane-host": "iris-predictor.default.svc.cluster.local"}
        assert (await client.infer("sklearn-iris", [_input()], headers=host)).as_numpy("label").tolist() == [1, 1]
        with pytest.raises(InferenceServerException) as raised:
            await client.infer("echo-model", [_input()], headers=host)
        assert raised.value.message() == "Model with name echo-model does not exist."
    finally:
        await client.close()


async def test_metadata_added_and_request_id_echoed(gateway: Gateway, echo: tuple[Echo, str]) -> None:
    request = pb.ModelInferRequest(model_name="echo-model", id="x").SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.ports['grpc']}") as channel:
        spoofed = (("knative-serving-revision", "spoofed"), ("traceparent", "00-ab-cd-01"))
        call = channel.unary_unary(INFER)(request, metadata=spoofed)
        assert await call == request
        initial = await call.initial_metadata()
        await channel.unary_unary(INFER)(request, metadata=(("x-request-id", "mine"),))
    first, second = echo[0].received
    assert first["knative-serving-revision"] == "echo-predictor-00001"
    assert first["knative-serving-namespace"] == "test"
    assert first["traceparent"] == "00-ab-cd-01"
    assert len(first["x-request-id"]) == 32 and initial["x-request-id"] == first["x-request-id"]
    assert second["x-request-id"] == "mine"


async def test_server_methods_answered_by_the_gateway_unless_a_host_is_named(gateway: Gateway) -> None:
    client = triton_aio.InferenceServerClient(f"127.0.0.1:{gateway.ports['grpc']}")
    try:
        assert await client.is_server_live() and await client.is_server_ready()
        assert (await client.get_server_metadata()).name == "servelane-gateway"
        host = {"x-servelane-host": "iris.default.example.com"}
        assert (await client.get_server_metadata(headers=host)).name == "servelane"  # the model server's
        assert await client.is_model_ready("sklearn-iris")
        assert (await client.get_model_metadata("sklearn-iris")).name == "sklearn-iris"
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.infer("nope", [_input()]), 'unknown model "nope"'),
        (lambda c: c.infer("x", [_input()], headers={"x-servelane-host": "nope.example.com"}),
         'unknown host "nope.example.com"'),
        (lambda c: c.get_model_repository_index(), "cannot route /inference.GRPCInferenceService/RepositoryIndex: "
         "set x-servelane-host to a service's host"),
    ],
)  # fmt: skip
async def test_what_matches_nothing_is_not_found(gateway: Gateway, call: Any, message: str) -> None:
    client = triton_aio.InferenceServerClient(f"127.0.0.1:{gateway.ports['grpc']}")
    try:
        with pytest.raises(InferenceServerException) as raised:
            await call(client)
    finally:
        await client.close()
    assert (raised.value.status(), raised.value.message()) == ("StatusCode.NOT_FOUND", message)


def _stream(address: str, models: list[str]) -> list[tuple[str, Any]]:
    replies: queue.Queue[tuple[str, Any]] = queue.Queue()
    client = triton.InferenceServerClient(address)
    try:
        client.start_stream(lambda result, error: replies.put(("error", error) if error else ("ok", result)))
        for i, model in enumerate(models):
            client.async_stream_infer(model, [_input()], request_id=str(i))
        collected = [replies.get(timeout=10) for _ in models]
        client.stop_stream()
    finally:
        client.close()
    return collected


async def test_stream_infer_routed_by_its_first_message(gateway: Gateway) -> None:
    replies = await asyncio.to_thread(_stream, f"127.0.0.1:{gateway.ports['grpc']}", ["sklearn-iris"] * 3)
    assert [kind for kind, _ in replies] == ["ok"] * 3
    assert [r.get_response().id for _, r in replies] == ["0", "1", "2"]


async def test_metrics_and_channels_follow_the_routing_state(gateway: Gateway, echo, client) -> None:
    request = pb.ModelInferRequest(model_name="echo-model").SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.ports['grpc']}") as channel:
        await channel.unary_unary(INFER)(request)
    assert echo[1] in gateway.grpc.channels
    async with client.get(f"http://127.0.0.1:{gateway.ports['metrics']}/metrics") as response:
        text = await response.text()
    assert ('gateway_requests_total{namespace_name="test",protocol="grpc",response_code_class="2xx",'
            'revision_name="echo-predictor-00001",service_name="echo"} 1.0') in text  # fmt: skip

    doc = document(gateway.model_server, echo[1], version=2)
    doc["services"] = [s for s in doc["services"] if s["name"] != "echo"]
    del doc["revisions"]["echo-predictor-00001"]
    gateway.apply(RoutingState.from_dict(doc))
    for _ in range(100):
        if echo[1] not in gateway.grpc.channels:
            break
        await asyncio.sleep(0.01)
    assert echo[1] not in gateway.grpc.channels


def _requests_served(model_server: Any) -> float:
    return sum(
        sample.value
        for metric in model_server.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "model_server_requests_total"
    )


async def test_internal_addresses_in_the_host_metadata_are_not_found_and_reach_nothing(
    gateway: Gateway, echo: tuple[Echo, str]
) -> None:
    """x-servelane-host naming a replica's own address, localhost on another port, or the gateway's admin port
    matches no service: NOT_FOUND, never a call to that address nor a fall back to routing by model name."""
    model_server, echo_address = gateway.model_server, echo[1]  # type: ignore[attr-defined]
    echo_port, admin = echo_address.rsplit(":", 1)[1], f"127.0.0.1:{gateway.ports['admin']}"
    infer = pb.ModelInferRequest(model_name="echo-model", id="x").SerializeToString()  # by model name: the echo
    iris = pb.ModelInferRequest(model_name="sklearn-iris").SerializeToString()
    hosts_and_requests = [
        (echo_address, infer),
        (f"localhost:{echo_port}", infer),
        (f"127.0.0.1:{model_server.grpc_port}", iris),
        (f"localhost:{model_server.grpc_port}", iris),
        (admin, infer),
        (f"localhost:{gateway.ports['admin']}", iris),
    ]
    served_before = _requests_served(model_server)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.ports['grpc']}") as channel:
        assert await channel.unary_unary(INFER)(infer) == infer  # the echo answers this request by model name
        del echo[0].received[:]
        channels = set(gateway.grpc.channels)  # the echo's, a routing-state endpoint
        for host, request in hosts_and_requests:
            await _unknown_host(channel, host, request, ((HOST_HEADER, host),))
    assert echo[0].received == []
    assert _requests_served(model_server) == served_before
    assert set(gateway.grpc.channels) == channels  # no channel opened to any address named


async def _unknown_host(channel: grpc.aio.Channel, host: str, request: bytes, metadata: tuple = ()) -> None:
    """ModelInfer and ServerMetadata on ``channel`` are NOT_FOUND for ``host``."""
    for method, body in ((INFER, request), (SERVICE + "ServerMetadata", b"")):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await channel.unary_unary(method)(body, metadata=metadata, timeout=5)
        assert (raised.value.code(), raised.value.details()) == (
            grpc.StatusCode.NOT_FOUND,
            f'unknown host "{host}"',
        ), (host, method)


# -- :authority, read by the gateway's gRPC front ------------------------------------------------------------------
def _authority_client(gateway: Gateway, authority: str) -> triton_aio.InferenceServerClient:
    return triton_aio.InferenceServerClient(
        f"127.0.0.1:{gateway.ports['grpc']}", channel_args=[("grpc.default_authority", authority)]
    )


async def test_infer_routed_by_authority(gateway: Gateway) -> None:
    """A channel's authority names the service as a Host would on HTTP; x-servelane-host still wins over it."""
    client = _authority_client(gateway, "iris-predictor.default.svc.cluster.local")
    try:
        assert (await client.infer("sklearn-iris", [_input()])).as_numpy("label").tolist() == [1, 1]
        with pytest.raises(InferenceServerException) as raised:  # the model server, whatever the model named
            await client.infer("echo-model", [_input()])
        assert raised.value.message() == "Model with name echo-model does not exist."
        assert (await client.get_server_metadata()).name == "servelane"  # the model server's, not the gateway's
        with pytest.raises(InferenceServerException) as raised:
            await client.infer("sklearn-iris", [_input()], headers={HOST_HEADER: "down.test.example.com"})
        assert raised.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        await client.close()
    client = _authority_client(gateway, "nope.example.com")
    try:
        with pytest.raises(InferenceServerException) as raised:
            await client.infer("sklearn-iris", [_input()])
        assert (raised.value.status(), raised.value.message()) == (
            "StatusCode.NOT_FOUND",
            'unknown host "nope.example.com"',
        )
        with pytest.raises(InferenceServerException):
            await client.is_server_live()  # an unknown authority is not the gateway's own either
        result = await client.infer("sklearn-iris", [_input()], headers={HOST_HEADER: "iris.default.example.com"})
        assert result.as_numpy("label").tolist() == [1, 1]
    finally:
        await client.close()


async def test_an_own_authority_routes_by_model_name(gateway: Gateway) -> None:
    client = _authority_client(gateway, f"localhost:{gateway.ports['grpc']}")
    try:
        assert (await client.infer("sklearn-iris", [_input()])).as_numpy("label").tolist() == [1, 1]
        assert (await client.get_server_metadata()).name == "servelane-gateway"
    finally:
        await client.close()


async def test_a_clients_own_authority_entry_is_overridden_and_none_goes_upstream(
    gateway: Gateway, echo: tuple[Echo, str]
) -> None:
    request = pb.ModelInferRequest(model_name="sklearn-iris").SerializeToString()  # by model name: iris
    options = [("grpc.default_authority", "echo.test.example.com")]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.ports['grpc']}", options=options) as channel:
        spoofed = (("x-servelane-authority", "iris.default.example.com"),)
        assert await channel.unary_unary(INFER)(request, metadata=spoofed) == request  # the echo answered
    (received,) = echo[0].received
    assert "x-servelane-authority" not in received and HOST_HEADER not in received


async def test_large_messages_stream_through_the_front_both_ways(gateway: Gateway, echo: tuple[Echo, str]) -> None:
    request = pb.ModelInferRequest(model_name="echo-model", raw_input_contents=[bytes(range(256)) * 12288])
    body = request.SerializeToString()  # 3 MiB (the echo takes at most 4): ~200 DATA frames each way
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.ports['grpc']}") as channel:
        calls = [channel.unary_unary(INFER)(body, timeout=30) for _ in range(3)]
        assert await asyncio.gather(*calls) == [body] * 3


async def test_internal_addresses_as_authority_are_not_found_and_reach_nothing(
    gateway: Gateway, echo: tuple[Echo, str]
) -> None:
    model_server, echo_address = gateway.model_server, echo[1]  # type: ignore[attr-defined]
    infer = pb.ModelInferRequest(model_name="echo-model").SerializeToString()
    served_before = _requests_served(model_server)
    for host in (echo_address, f"127.0.0.1:{model_server.grpc_port}", f"localhost:{gateway.ports['admin']}"):
        options = [("grpc.default_authority", host)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.ports['grpc']}", options=options) as channel:
            await _unknown_host(channel, host, infer)
    assert echo[0].received == []
    assert _requests_served(model_server) == served_before


async def test_without_the_front_the_authority_is_not_read(
    start_model_server, iris_repository, start_gateway, echo: tuple[Echo, str]
) -> None:
    model_server = await start_model_server(iris_repository)
    gateway = await start_gateway(document(model_server, echo[1]), grpc_authority=False)
    assert gateway.grpc_front is None
    client = _authority_client(gateway, "echo.test.example.com")
    try:
        assert (await client.infer("sklearn-iris", [_input()])).as_numpy("label").tolist() == [1, 1]
    finally:
        await client.close()


async def test_stopping_the_gateway_ends_the_fronts_connections_and_removes_its_socket(gateway: Gateway) -> None:
    front = gateway.grpc_front
    assert front is not None and front.socket.exists()
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["grpc"])
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    await writer.drain()
    assert (await reader.read(9))[3] == 0x4  # the gRPC server's SETTINGS, through the front
    await gateway.stop()
    assert await asyncio.wait_for(reader.read(), 5) is not None  # read to EOF: the connection ended
    writer.close()
    assert not front.socket.parent.exists()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", gateway.ports["grpc"])


async def test_a_call_in_flight_when_the_gateway_stops_finishes_through_the_front(
    gateway: Gateway, echo: tuple[Echo, str]
) -> None:
    """SIGTERM's path: the gRPC port stops taking connections at once, and a call already on its way through the
    front and the proxy gets its answer before the gateway is done stopping."""
    handler, port = echo[0], gateway.ports["grpc"]
    handler.gate = asyncio.Event()
    request = pb.ModelInferRequest(model_name="echo-model", id="held").SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(INFER)(request, timeout=10)
        await eventually(lambda: len(handler.received) == 1)
        stopping = asyncio.create_task(gateway.stop())
        await asyncio.sleep(0.3)
        assert not stopping.done()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        handler.gate.set()
        assert await call == request
        await asyncio.wait_for(stopping, 5)


async def test_bytes_that_are_not_http2_end_their_connection_and_nothing_else(gateway: Gateway) -> None:
    port = gateway.ports["grpc"]
    for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", PREFACE + b"\x00\x00\x01\x09\x04\x00\x00\x00\x01\x82"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(garbage)
        await asyncio.wait_for(reader.read(), 5)  # to EOF: closed (the server's SETTINGS may have come first)
        assert reader.at_eof()
        writer.close()
    client = triton_aio.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        assert (await client.infer("sklearn-iris", [_input()])).as_numpy("label").tolist() == [1, 1]
    finally:
        await client.close()
