"""The gRPC pass-through over loopback: the proxy on a free port in front of the real model server (talked to with
tritonclient.grpc and tritonclient.grpc.aio) or in front of a small grpc.aio upstream of raw-bytes methods, one of
each kind, whose slow method is held on an asyncio.Event."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from common.breaker import QueueFull
from common.errors import ServelaneError
from common.grpc_proxy import UNARY_METHODS, CallOutcome, GrpcProxy, build_grpc_proxy
from tests.models import build_add, build_identity_multi

IRIS_ROWS = np.array([[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]], dtype=np.float32)
KNATIVE = frozenset({"knative-serving-revision", "knative-serving-namespace", "k-original-host"})
MiB = 1024 * 1024


# -- the admitter: records what it saw and the final code of every call it let in --------------------------------
class Admitter:
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.outcomes: asyncio.Queue[grpc.StatusCode] = asyncio.Queue()
        self.reject: ServelaneError | None = None
        self.hold: asyncio.Event | None = None

    @contextlib.asynccontextmanager
    async def __call__(self, metadata: dict[str, str]) -> AsyncIterator[CallOutcome]:
        self.seen.append(metadata)
        if self.reject is not None:
            raise self.reject
        if self.hold is not None:
            await self.hold.wait()
        outcome = CallOutcome()
        try:
            yield outcome
        finally:
            self.outcomes.put_nowait(outcome.code)

    async def outcome(self) -> grpc.StatusCode:
        return await asyncio.wait_for(self.outcomes.get(), 10)


# -- the test upstream: one raw-bytes method of each kind ---------------------------------------------------------
class Echo:
    """``test.Echo``: Metadata (unary: echoes nothing, records metadata, sends initial and trailing metadata),
    Split (unary-stream: one reply per byte), Join (stream-unary), Chat (stream-stream: each message back), Slow
    (unary, held on ``gate``), Fail (unary: aborts with a status, details and trailing metadata)."""

    def __init__(self) -> None:
        self.received: list[tuple[tuple[str, Any], ...]] = []
        self.time_left: list[float | None] = []
        self.calls = 0
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "Metadata": grpc.unary_unary_rpc_method_handler(self.metadata),
            "Split": grpc.unary_stream_rpc_method_handler(self.split),
            "Join": grpc.stream_unary_rpc_method_handler(self.join),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
        }
        return grpc.method_handlers_generic_handler("test.Echo", methods)

    def _record(self, context: grpc.aio.ServicerContext) -> None:
        self.calls += 1
        self.received.append(tuple((m.key, m.value) for m in context.invocation_metadata()))
        self.time_left.append(context.time_remaining())

    async def metadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self._record(context)
        await context.send_initial_metadata((("x-initial", "1"),))
        context.set_trailing_metadata((("x-trailing", "2"), ("x-trailing-bin", b"\x00\xff")))
        return request

    async def split(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self._record(context)
        for byte in request:
            yield bytes([byte])

    async def join(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        self._record(context)
        return b"".join([message async for message in requests])

    async def chat(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self._record(context)
        async for message in requests:
            yield message.upper()

    async def slow(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self._record(context)
        self.started.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"done"

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self._record(context)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the reason, unchanged", (("x-why", "because"),))


@pytest.fixture
async def echo() -> AsyncIterator[tuple[Echo, str]]:
    upstream = Echo()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((upstream.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield upstream, f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture
def admitter() -> Admitter:
    return Admitter()


# every test runs against both ways the proxy serves a call: the unary methods as unary-unary (the Open Inference
# Protocol's by default, and here the echo's unary ones too), and everything as stream-stream
UNARY = {"unary": UNARY_METHODS | {"/test.Echo/Metadata", "/test.Echo/Slow", "/test.Echo/Fail"}, "stream": frozenset()}


@pytest.fixture(params=sorted(UNARY))
async def start_proxy(
    admitter: Admitter, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Awaitable[tuple[GrpcProxy, str]]]]:
    """Factory: ``await start_proxy(upstream, timeout=..., max_message_bytes=...)`` -> (proxy, its address)."""
    proxies: list[GrpcProxy] = []

    async def start(upstream: str, timeout: float | None = None, max_message_bytes: int = 4 * MiB) -> Any:
        proxy = build_grpc_proxy(
            upstream, admit=admitter, timeout=timeout, max_message_bytes=max_message_bytes, drop=KNATIVE,
            unary=UNARY[request.param],
        )  # fmt: skip
        proxies.append(proxy)
        port = await proxy.start("127.0.0.1", 0)
        return proxy, f"127.0.0.1:{port}"

    yield start
    for proxy in proxies:
        await proxy.stop(None)


@pytest.fixture
async def channel(
    echo: tuple[Echo, str], start_proxy: Callable[..., Awaitable[tuple[GrpcProxy, str]]]
) -> AsyncIterator[grpc.aio.Channel]:
    """A client channel to a proxy in front of the echo upstream, with a 1 s timeout and 1 KiB messages."""
    _, address = await start_proxy(echo[1], timeout=1.0, max_message_bytes=1024)
    async with grpc.aio.insecure_channel(address) as client:
        yield client


# -- through to the real model server -----------------------------------------------------------------------------
@pytest.fixture
def repository(tmp_path: Path, iris_repository: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(iris_repository / "sklearn-iris", root / "sklearn-iris")
    build_identity_multi(root / "multi" / "1" / "model.onnx")
    build_add(root / "add" / "1" / "model.onnx")
    return root


@pytest.fixture
async def model_address(start_model_server: Callable[..., Awaitable[Any]], repository: Path) -> str:
    server = await start_model_server(repository)
    return f"127.0.0.1:{server.grpc_port}"


@pytest.fixture
async def proxied(model_address: str, start_proxy: Callable[..., Awaitable[tuple[GrpcProxy, str]]]) -> str:
    _, address = await start_proxy(model_address)
    return address


def _input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


async def test_model_infer_round_trips(proxied: str, admitter: Admitter) -> None:
    client = triton_aio.InferenceServerClient(proxied)
    try:
        result = await client.infer("sklearn-iris", [_input("input", IRIS_ROWS, "FP32")], request_id="r1")
        assert result.as_numpy("label").tolist() == [1, 1]
        assert result.as_numpy("probabilities").shape == (2, 3)
        assert result.get_response().id == "r1"

        a = np.array([[1.5, -2, 0]], dtype=np.float32)
        b = np.array([[1, 2, -3]], dtype=np.int64)
        c = np.array([[True, False, True]])
        s = np.array([[b"h\x00llo w\xc3\xb6rld"]], dtype=np.object_)
        inputs = [_input("a", a, "FP32"), _input("b", b, "INT64"), _input("c", c, "BOOL"), _input("s", s, "BYTES")]
        result = await client.infer("multi", inputs)
        np.testing.assert_array_equal(result.as_numpy("a2"), 2 * a)
        np.testing.assert_array_equal(result.as_numpy("b1"), b + 1)
        np.testing.assert_array_equal(result.as_numpy("nc"), ~c)
        assert result.as_numpy("s_out").tolist() == [[b"h\x00llo w\xc3\xb6rld"]]
    finally:
        await client.close()
    assert [await admitter.outcome(), await admitter.outcome()] == [grpc.StatusCode.OK] * 2


async def test_error_status_and_message_relayed_unchanged(proxied: str, model_address: str, admitter: Admitter) -> None:
    async def infer_unknown(address: str) -> InferenceServerException:
        client = triton_aio.InferenceServerClient(address)
        try:
            with pytest.raises(InferenceServerException) as raised:
                await client.infer("nope", [_input("input", IRIS_ROWS, "FP32")])
        finally:
            await client.close()
        return raised.value

    direct, through = await infer_unknown(model_address), await infer_unknown(proxied)
    assert through.status() == "StatusCode.NOT_FOUND"
    assert through.message() == direct.message()
    assert "Model with name nope does not exist" in through.message()
    assert await admitter.outcome() == grpc.StatusCode.NOT_FOUND


def _stream(address: str, requests: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    """Send (model, id) requests on one ModelStreamInfer stream; ("ok", result) or ("error", exception) each."""
    replies: queue.Queue[tuple[str, Any]] = queue.Queue()
    client = triton.InferenceServerClient(address)
    x = _input("x", np.arange(4, dtype=np.float32).reshape(1, 4), "FP32")
    try:
        client.start_stream(lambda result, error: replies.put(("error", error) if error else ("ok", result)))
        for model, request_id in requests:
            client.async_stream_infer(model, [x], request_id=request_id)
        collected = [replies.get(timeout=10) for _ in requests]
        client.stop_stream()
    finally:
        client.close()
    return collected


async def test_model_stream_infer_streams_through(proxied: str, admitter: Admitter) -> None:
    replies = await asyncio.to_thread(_stream, proxied, [("add", "r1"), ("nope", "r2"), ("add", "r3")])

    assert [kind for kind, _ in replies] == ["ok", "error", "ok"]
    assert [replies[0][1].get_response().id, replies[2][1].get_response().id] == ["r1", "r3"]
    np.testing.assert_array_equal(replies[2][1].as_numpy("y"), [[1, 2, 3, 4]])
    assert "nope" in replies[1][1].message()
    assert await admitter.outcome() == grpc.StatusCode.OK  # one call: the whole stream
    assert admitter.outcomes.empty()


# -- the four kinds and metadata, against the echo upstream -------------------------------------------------------
async def test_metadata_forwarded_minus_knative_and_relayed_back(
    channel: grpc.aio.Channel, echo: tuple[Echo, str], admitter: Admitter
) -> None:
    sent = (
        ("x-request-id", "r1"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("knative-serving-revision", "rev-1"),
        ("knative-serving-namespace", "ns"),
        ("k-original-host", "model.example.com"),
        ("k-proxy-request", "activator"),
        ("x-blob-bin", b"\x00\x01\x02"),
    )
    call = channel.unary_unary("/test.Echo/Metadata")(b"ping", metadata=sent)

    assert await call == b"ping"
    assert await call.initial_metadata() == grpc.aio.Metadata(("x-initial", "1"))
    assert await call.trailing_metadata() == grpc.aio.Metadata(("x-trailing", "2"), ("x-trailing-bin", b"\x00\xff"))
    received = echo[0].received[0]
    assert sorted((k, v) for k, v in received if k != "user-agent") == [  # gRPC keeps no order across keys
        ("k-proxy-request", "activator"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("x-blob-bin", b"\x00\x01\x02"),
        ("x-request-id", "r1"),
    ]
    assert admitter.seen[0]["knative-serving-revision"] == "rev-1"  # the admitter sees everything text
    assert admitter.seen[0]["k-proxy-request"] == "activator"
    assert "x-blob-bin" not in admitter.seen[0]


async def test_unary_stream_and_stream_unary(channel: grpc.aio.Channel, admitter: Admitter) -> None:
    replies = [reply async for reply in channel.unary_stream("/test.Echo/Split")(b"abc")]
    assert replies == [b"a", b"b", b"c"]

    assert await channel.stream_unary("/test.Echo/Join")(iter([b"x", b"y", b"z"])) == b"xyz"
    assert [await admitter.outcome(), await admitter.outcome()] == [grpc.StatusCode.OK] * 2


async def test_stream_stream_interleaves(channel: grpc.aio.Channel) -> None:
    call = channel.stream_stream("/test.Echo/Chat")()
    for message in (b"one", b"two"):
        await call.write(message)
        assert await call.read() == message.upper()  # each reply arrives before the next request is sent
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_upstream_status_details_and_trailers_relayed(channel: grpc.aio.Channel, admitter: Admitter) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary("/test.Echo/Fail")(b"")
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == "the reason, unchanged"
    assert raised.value.trailing_metadata() == grpc.aio.Metadata(("x-why", "because"))
    assert await admitter.outcome() == grpc.StatusCode.FAILED_PRECONDITION


async def test_unknown_method_relayed_as_the_upstream_answers(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary("/test.Nothing/Here")(b"")
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- admission ----------------------------------------------------------------------------------------------------
async def test_admission_rejected_forwards_nothing(
    channel: grpc.aio.Channel, echo: tuple[Echo, str], admitter: Admitter
) -> None:
    admitter.reject = QueueFull()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary("/test.Echo/Metadata")(b"ping")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.details() == "pending request queue full"
    assert echo[0].calls == 0
    assert admitter.outcomes.empty()  # never admitted, so nothing to record


async def test_timeout_covers_the_wait_for_admission(
    channel: grpc.aio.Channel, echo: tuple[Echo, str], admitter: Admitter
) -> None:
    admitter.hold = asyncio.Event()  # never set: the call waits in the queue until the 1 s timeout
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary("/test.Echo/Metadata")(b"ping")
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert raised.value.details() == "request timed out after 1s"
    assert echo[0].calls == 0


# -- timeouts, cancellation, failures -----------------------------------------------------------------------------
async def test_timeout_cancels_the_upstream_call(
    channel: grpc.aio.Channel, echo: tuple[Echo, str], admitter: Admitter
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary("/test.Echo/Slow")(b"")
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert raised.value.details() == "request timed out after 1s"
    await asyncio.wait_for(echo[0].cancelled.wait(), 10)
    assert await admitter.outcome() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_client_cancellation_cancels_the_upstream_call(
    channel: grpc.aio.Channel, echo: tuple[Echo, str], admitter: Admitter
) -> None:
    call = channel.unary_unary("/test.Echo/Slow")(b"")
    await asyncio.wait_for(echo[0].started.wait(), 10)
    call.cancel()
    await asyncio.wait_for(echo[0].cancelled.wait(), 10)
    assert await admitter.outcome() == grpc.StatusCode.CANCELLED


async def test_upstream_deadline_is_the_sooner_of_ours_and_the_clients(
    channel: grpc.aio.Channel, echo: tuple[Echo, str]
) -> None:
    method = channel.unary_unary("/test.Echo/Metadata")
    await method(b"")  # the proxy's 1 s
    await method(b"", timeout=0.5)  # the client's, sooner
    await method(b"", timeout=30)  # the proxy's, sooner
    first, second, third = echo[0].time_left  # gRPC rounds the grpc-timeout header up a little
    assert first is not None and 0.6 < first <= 1.1
    assert second is not None and second <= 0.6
    assert third is not None and 0.6 < third <= 1.1


async def test_no_deadline_when_neither_sets_one(
    echo: tuple[Echo, str], start_proxy: Callable[..., Awaitable[tuple[GrpcProxy, str]]]
) -> None:
    _, address = await start_proxy(echo[1])
    async with grpc.aio.insecure_channel(address) as client:
        await client.unary_unary("/test.Echo/Metadata")(b"")
    assert echo[0].time_left == [None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_upstream_down_is_unavailable(
    start_proxy: Callable[..., Awaitable[tuple[GrpcProxy, str]]], admitter: Admitter
) -> None:
    _, address = await start_proxy(f"127.0.0.1:{_free_port()}")
    async with grpc.aio.insecure_channel(address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.unary_unary("/test.Echo/Metadata")(b"ping")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.details() == "upstream unreachable: connection refused"
    assert await admitter.outcome() == grpc.StatusCode.UNAVAILABLE


async def test_message_size_limited_both_ways(channel: grpc.aio.Channel, echo: tuple[Echo, str]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary("/test.Echo/Metadata")(b"x" * 2000)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert echo[0].calls == 0

    with pytest.raises(grpc.aio.AioRpcError) as raised:  # three small messages in, one too large to come back
        await channel.stream_unary("/test.Echo/Join")(iter([b"x" * 600] * 3))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert echo[0].calls == 1


# -- drain --------------------------------------------------------------------------------------------------------
async def test_stop_lets_the_call_in_flight_finish(
    echo: tuple[Echo, str], start_proxy: Callable[..., Awaitable[tuple[GrpcProxy, str]]]
) -> None:
    proxy, address = await start_proxy(echo[1])
    async with grpc.aio.insecure_channel(address) as client:
        call = client.unary_unary("/test.Echo/Slow")(b"")
        await asyncio.wait_for(echo[0].started.wait(), 10)
        stopping = asyncio.create_task(proxy.stop(30))
        await asyncio.sleep(0)  # one turn of the loop: stop() has begun (no timing involved)
        assert not stopping.done()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.unary_unary("/test.Echo/Metadata")(b"late")
        echo[0].gate.set()
        assert await call == b"done"
        await asyncio.wait_for(stopping, 10)
    # gRPC refuses it UNAVAILABLE once the client has read the GOAWAY, CANCELLED if it raced it; never forwarded.
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert echo[0].calls == 1
    assert not echo[0].cancelled.is_set()
    assert repr(proxy) == f"<GrpcProxy upstream={echo[1]} timeout=None stopped>"
