"""The gRPC pass-through with a per-call upstream (build_routing_grpc_proxy) over loopback, in front of two raw-bytes
echo upstreams: the route hook's choice, the first message read before routing and still sent, extra and reply
metadata, a per-call timeout, channels closed once their upstream left, and local handlers asked first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from common.errors import NotFound
from common.grpc_proxy import Call, CallOutcome, GrpcProxy, build_routing_grpc_proxy
from tests.common.test_grpc_proxy_functional import UNARY, Echo


class Router:
    """Routes by the ``x-to`` metadata entry, or by the first message (``a...``/``b...``) when there is none."""

    def __init__(self, upstreams: dict[str, str]) -> None:
        self.upstreams = upstreams
        self.timeout: float | None = None
        self.codes: list[grpc.StatusCode] = []

    @contextlib.asynccontextmanager
    async def __call__(self, call: Call) -> AsyncIterator[CallOutcome]:
        call.reply_metadata = (("x-request-id", "r1"),)
        name = call.metadata.get("x-to")
        if name is None:
            first = await call.first_message()
            name = (first or b"?")[:1].decode()
        if name not in self.upstreams:
            raise NotFound(f"no upstream {name!r}")
        call.upstream = self.upstreams[name]
        call.timeout = self.timeout
        call.extra_metadata = (("x-routed-to", name),)
        outcome = CallOutcome()
        try:
            yield outcome
        finally:
            self.codes.append(outcome.code)


class Local(grpc.GenericRpcHandler):
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != "/test.Local/Hi":
            return None

        async def hi(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return b"hello from here"

        return grpc.unary_unary_rpc_method_handler(hi)


async def _echo_server(echo: Echo) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((echo.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(params=sorted(UNARY))  # both ways of serving a call, as in test_grpc_proxy_functional
async def setup(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[GrpcProxy, grpc.aio.Channel, Router, dict[str, Echo]]]:
    echoes = {"a": Echo(), "b": Echo()}
    servers = {name: await _echo_server(echo) for name, echo in echoes.items()}
    router = Router({name: address for name, (_, address) in servers.items()})
    proxy = build_routing_grpc_proxy(route=router, max_message_bytes=1 << 20, drop=frozenset({"x-to"}),
                                     handlers=(Local(),), unary=UNARY[request.param])  # fmt: skip
    port = await proxy.start("127.0.0.1", 0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield proxy, channel, router, echoes
    await proxy.stop(None)
    for server, _ in servers.values():
        await server.stop(None)


async def test_each_call_goes_where_the_router_says(setup) -> None:
    proxy, channel, router, echoes = setup
    method = channel.unary_unary("/test.Echo/Metadata")
    assert await method(b"ping", metadata=(("x-to", "b"),)) == b"ping"
    assert await method(b"ping", metadata=(("x-to", "a"),)) == b"ping"
    assert await method(b"ping", metadata=(("x-to", "b"),)) == b"ping"
    assert (echoes["a"].calls, echoes["b"].calls) == (1, 2)
    received = dict(echoes["b"].received[0])
    assert received["x-routed-to"] == "b" and "x-to" not in received
    assert proxy.channels == sorted(router.upstreams.values())
    assert repr(proxy).startswith("<GrpcProxy upstream=routed timeout=None serving")


async def test_the_first_message_routes_and_still_goes_upstream_first(setup) -> None:
    _, channel, _, echoes = setup
    assert await channel.unary_unary("/test.Echo/Metadata")(b"b-message") == b"b-message"
    assert await channel.stream_unary("/test.Echo/Join")(iter([b"a1", b"a2", b"a3"])) == b"a1a2a3"
    assert (echoes["a"].calls, echoes["b"].calls) == (1, 1)


async def test_reply_metadata_comes_back_with_answers_and_errors(setup) -> None:
    _, channel, router, echoes = setup
    call = channel.unary_unary("/test.Echo/Metadata")(b"a")
    await call
    initial = await call.initial_metadata()
    assert initial["x-request-id"] == "r1" and initial["x-initial"] == "1"

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary("/test.Echo/Metadata")(b"z")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "no upstream 'z'"
    assert raised.value.trailing_metadata()["x-request-id"] == "r1"
    assert echoes["a"].calls + echoes["b"].calls == 1

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary("/test.Echo/Fail")(b"a")
    assert raised.value.trailing_metadata()["x-request-id"] == "r1"
    assert raised.value.trailing_metadata()["x-why"] == "because"
    assert router.codes == [grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION]


async def test_the_routers_timeout_bounds_the_call(setup) -> None:
    _, channel, router, echoes = setup
    router.timeout = 0.3
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary("/test.Echo/Slow")(b"a")
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert raised.value.details() == "request timed out after 0.3s"
    await asyncio.wait_for(echoes["a"].cancelled.wait(), 10)


async def test_channels_to_upstreams_that_left_close_when_their_last_call_ends(setup) -> None:
    proxy, channel, router, echoes = setup
    slow = channel.unary_unary("/test.Echo/Slow")(b"b")
    await asyncio.wait_for(echoes["b"].started.wait(), 10)
    await channel.unary_unary("/test.Echo/Metadata")(b"a")
    proxy.retain([router.upstreams["a"]])
    assert proxy.channels == sorted(router.upstreams.values())  # b still has a call in flight
    echoes["b"].gate.set()
    assert await slow == b"done"
    for _ in range(100):
        if proxy.channels == [router.upstreams["a"]]:
            break
        await asyncio.sleep(0.01)
    assert proxy.channels == [router.upstreams["a"]]
    assert await channel.unary_unary("/test.Echo/Metadata")(b"b") == b"b"  # a new call opens a new channel


async def test_handlers_are_asked_first(setup) -> None:
    _, channel, _, echoes = setup
    assert await channel.unary_unary("/test.Local/Hi")(b"") == b"hello from here"
    assert echoes["a"].calls + echoes["b"].calls == 0
