"""The gateway over loopback in front of stand-in replicas: routing by host, path and tag, the headers it adds, 404s
that reach nothing, 503/502/504, a state swap under load, admin and metrics ports."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.state import RoutingState
from tests.gateway.backend import Backend
from tests.gateway.conftest import eventually
from tests.gateway.documents import endpoint, iris_document

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def url(gateway: Gateway, path: str, port: str = "http") -> str:
    return f"http://127.0.0.1:{gateway.ports[port]}{path}"


ID = {"X-Request-Id": "req-7"}


async def call(
    client: aiohttp.ClientSession, gateway: Gateway, path: str, host: str | None = None, **headers: str
) -> tuple[int, Any, Any]:
    if host is not None:
        headers["Host"] = host
    async with client.post(url(gateway, path), headers=headers, data=b"{}") as response:
        body = await response.json(content_type=None)
        return response.status, body, response.headers


@pytest.fixture
async def replicas(start_backend) -> dict[str, Backend]:
    names = ("transformer", "predictor-1", "predictor-2", "explainer", "other")
    return {name: await start_backend(name) for name in names}


def document(replicas: dict[str, Backend], **kwargs: Any) -> dict[str, Any]:
    revisions = ("sklearn-iris-transformer-00001", "sklearn-iris-predictor-00001", "sklearn-iris-predictor-00002",
                 "sklearn-iris-explainer-00001", "other-predictor-00001")  # fmt: skip
    endpoints = {rev: [endpoint(b.address)] for rev, b in zip(revisions, replicas.values())}
    return iris_document(endpoints, **kwargs)


async def test_routes_by_host_path_and_tag(replicas, start_gateway, client) -> None:
    gateway = await start_gateway(document(replicas, canary=0))
    predict = "/v1/models/sklearn-iris:predict"
    cases = [
        ((predict, "sklearn-iris.default.example.com"), "transformer"),
        ((predict, "sklearn-iris.default.svc.cluster.local:80"), "transformer"),
        ((predict, None), "transformer"),  # Host 127.0.0.1:<gateway port>: by the model in the path
        (("/v1/models/sklearn-iris:explain", None), "explainer"),
        (("/v2/models/other-model/infer", "localhost"), "other"),
        ((predict, "sklearn-iris-predictor.default.example.com"), "predictor-1"),
        ((predict, "latest-sklearn-iris-predictor.default.example.com"), "predictor-2"),
        ((predict, "prev-sklearn-iris-predictor.default.example.com"), "predictor-1"),
    ]
    for (path, host), expected in cases:
        status, body, _ = await call(client, gateway, path, host)
        assert (status, body["backend"], body["path"]) == (200, expected, path), (path, host)
    _, body, _ = await call(client, gateway, predict, "sklearn-iris-predictor.default.example.com",
                            **{"Knative-Serving-Tag": "latest"})  # fmt: skip
    assert body["backend"] == "predictor-2"


async def test_headers_added_passed_and_echoed(replicas, start_gateway, client) -> None:
    gateway = await start_gateway(document(replicas))
    host = "sklearn-iris.default.example.com"
    status, _, headers = await call(
        client, gateway, "/v1/models/sklearn-iris:predict?x=1", host, traceparent=TRACEPARENT, tracestate="a=b",
        **{"Knative-Serving-Revision": "spoofed", "K-Original-Host": "evil.example.com"},
    )  # fmt: skip
    assert status == 200
    path, seen = replicas["transformer"].seen[-1]
    assert path == "/v1/models/sklearn-iris:predict?x=1"
    assert seen["Host"] == host  # the client's own Host reaches the replica
    assert seen.getall("Knative-Serving-Revision") == ["sklearn-iris-transformer-00001"]
    assert seen["Knative-Serving-Namespace"] == "default"
    assert "K-Original-Host" not in seen
    assert (seen["traceparent"], seen["tracestate"]) == (TRACEPARENT, "a=b")
    assert seen["X-Forwarded-Host"] == host
    generated = seen["X-Request-Id"]
    assert len(generated) == 32
    assert headers.getall("X-Request-Id") == [generated]  # ours, not the backend's copy
    timing = headers["Server-Timing"]
    assert timing.startswith("app;dur=1.000, gateway;dur=")

    await call(client, gateway, "/v1/models/sklearn-iris:predict", host, **{"X-Request-Id": "client-id"})
    assert replicas["transformer"].seen[-1][1]["X-Request-Id"] == "client-id"


async def test_unknown_hosts_models_and_internal_addresses_reach_nothing(replicas, start_gateway, client) -> None:
    gateway = await start_gateway(document(replicas))
    predictor, predict = replicas["predictor-1"], "/v1/models/sklearn-iris:predict"
    cases = [
        (predict, "nope.default.example.com", 'unknown host "nope.default.example.com"'),
        (predict, predictor.address, f'unknown host "{predictor.address}"'),
        (predict, f"localhost:{predictor.port}", f'unknown host "localhost:{predictor.port}"'),
        ("/v1/models/nope:predict", None, 'unknown model "nope"'),
        ("/v2/models/nope/infer", "example.com", 'unknown model "nope"'),
        ("/admin", None, "no model in path '/admin': use /v1/models/<name> or /v2/models/<name>"),
    ]
    for path, host, message in cases:
        status, body, headers = await call(client, gateway, path, host)
        assert (status, body) == (404, {"error": message})
        assert len(headers["X-Request-Id"]) == 32
    assert sum(b.requests for b in replicas.values()) == 0


async def test_no_ready_replica_is_503(replicas, start_gateway, client) -> None:
    doc = document(replicas)
    doc["revisions"]["other-predictor-00001"]["endpoints"] = [endpoint(replicas["other"].address, ready=False)]
    gateway = await start_gateway(doc)
    status, body, headers = await call(client, gateway, "/", "other.prod.example.com", **{"X-Request-Id": "r9"})
    assert (status, body) == (503, {"error": "no ready replica for revision other-predictor-00001"})
    assert headers["Retry-After"] == "1"
    assert headers["X-Request-Id"] == "r9"
    assert replicas["other"].requests == 0


async def test_refused_replica_is_502_and_revision_timeout_is_504(replicas, start_gateway, client) -> None:
    doc = document(replicas, timeout=0.3)
    doc["revisions"]["other-predictor-00001"]["endpoints"] = [endpoint("127.0.0.1:1")]
    gateway = await start_gateway(doc)
    status, body, headers = await call(client, gateway, "/", "other.prod.example.com")
    assert status == 502 and body["error"].startswith("upstream http://127.0.0.1:1 failed")
    assert len(headers["X-Request-Id"]) == 32  # made by the gateway, on its own error answers too
    status, body, headers = await call(client, gateway, "/hold", "sklearn-iris.default.example.com", **ID)
    assert (status, body, headers["X-Request-Id"]) == (504, {"error": "request timeout"}, ID["X-Request-Id"])


async def test_ninety_ten_split_reaches_each_revision_with_its_header(replicas, start_gateway, client) -> None:
    gateway = await start_gateway(document(replicas, canary=10))

    async def worker() -> None:
        for _ in range(100):
            await call(client, gateway, "/", "sklearn-iris-predictor.default.example.com")

    await asyncio.gather(*(worker() for _ in range(10)))
    canary = replicas["predictor-2"]
    assert replicas["predictor-1"].requests + canary.requests == 1000
    assert abs(canary.requests / 10 - 10) <= 4
    assert {seen["Knative-Serving-Revision"] for _, seen in canary.seen} == {"sklearn-iris-predictor-00002"}


async def test_state_swap_under_load_loses_no_request(replicas, start_gateway, client) -> None:
    first, second = replicas["predictor-1"], replicas["predictor-2"]
    docs = []
    for version, backend in enumerate((first, second), start=1):
        doc = document(replicas, version=version)
        doc["revisions"]["other-predictor-00001"]["endpoints"] = [endpoint(backend.address)]
        docs.append(RoutingState.from_dict(doc))
    gateway = await start_gateway(docs[0].to_dict())
    held = asyncio.create_task(call(client, gateway, "/hold", "other.prod.example.com"))
    await eventually(lambda: first.holding == 1)
    statuses: list[int] = []
    swapping = True

    async def load() -> None:
        while swapping:
            statuses.append((await call(client, gateway, "/", "other.prod.example.com"))[0])

    workers = [asyncio.create_task(load()) for _ in range(8)]
    for i in range(40):
        gateway.apply(docs[(i + 1) % 2])
        await asyncio.sleep(0.005)
    swapping = False
    await asyncio.gather(*workers)
    first.release.set()
    status, body, _ = await held
    assert (status, body["backend"]) == (200, "predictor-1")  # kept the replica it picked before the swaps
    assert len(statuses) > 40 and set(statuses) == {200}
    assert first.requests > 1 and second.requests > 1


async def test_a_changed_routes_file_is_picked_up_and_a_bad_one_ignored(replicas, start_gateway, client) -> None:
    gateway = await start_gateway(document(replicas))
    routes = gateway.config.routes
    doc = document(replicas, version=2)
    doc["revisions"]["other-predictor-00001"]["endpoints"] = [endpoint(replicas["predictor-2"].address)]
    routes.write_text("services: [oops")  # not YAML: logged, the state in force stays
    await asyncio.sleep(0.2)
    assert gateway.state.version == 1
    routes.write_text(json.dumps(doc))
    await eventually(lambda: gateway.state.version == 2)
    _, body, _ = await call(client, gateway, "/", "other.prod.example.com")
    assert body["backend"] == "predictor-2"


async def test_admin_and_local_answers(replicas, start_gateway, client) -> None:
    doc = document(replicas, version=4)
    gateway = await start_gateway(doc)
    async with client.get(url(gateway, "/healthz", "admin")) as response:
        assert response.status == 200
    async with client.get(url(gateway, "/readyz", "admin")) as response:
        assert (response.status, await response.text()) == (200, "ready: routing state version 4")
    async with client.get(url(gateway, "/routing", "admin")) as response:
        assert await response.json() == RoutingState.from_dict(doc).to_dict()
    async with client.get(url(gateway, "/v2/health/ready")) as response:
        assert response.status == 200 and "X-Request-Id" in response.headers
    async with client.get(url(gateway, "/v2")) as response:
        assert (await response.json())["name"] == "servelane-gateway"
    async with client.get(url(gateway, "/v2/health/ready"), headers={"Host": "other.prod.example.com"}) as response:
        assert (await response.json())["backend"] == "other"  # a service's host: its own health endpoint


async def test_the_admin_port_listens_on_its_own_address(replicas, start_gateway, client) -> None:
    # the serving ports on 127.0.0.2, the admin port (its /routing lists every replica) on 127.0.0.1 only
    gateway = await start_gateway(document(replicas), host="127.0.0.2", admin_host="127.0.0.1")
    async with client.get(url(gateway, "/healthz", "admin")) as response:
        assert response.status == 200
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.get(f"http://127.0.0.2:{gateway.ports['admin']}/healthz")
    async with client.get(f"http://127.0.0.2:{gateway.ports['http']}/v2/health/live") as response:
        assert response.status == 200
    async with client.get(f"http://127.0.0.2:{gateway.ports['metrics']}/metrics") as response:
        assert response.status == 200


async def test_metrics_by_revision_and_class_and_gone_revisions_removed(replicas, start_gateway, client) -> None:
    gateway = await start_gateway(document(replicas))
    await call(client, gateway, "/", "other.prod.example.com")
    await call(client, gateway, "/", "nope.example.com")
    held = asyncio.create_task(call(client, gateway, "/hold", "sklearn-iris.default.example.com"))
    await eventually(lambda: replicas["transformer"].holding == 1)

    async def scrape() -> str:
        async with client.get(url(gateway, "/metrics", "metrics")) as response:
            return await response.text()

    text = await scrape()
    other = 'namespace_name="prod",protocol="http",response_code_class="2xx",revision_name="other-predictor-00001"'
    assert f'gateway_requests_total{{{other},service_name="other"}} 1.0' in text
    assert 'response_code_class="4xx",revision_name="",service_name=""} 1.0' in text
    assert 'gateway_request_duration_seconds_bucket{le="+Inf",' + other in text
    assert ('gateway_requests_in_flight{namespace_name="default",revision_name="sklearn-iris-transformer-00001",'
            'service_name="sklearn-iris"} 1.0') in text  # fmt: skip
    assert "gateway_routing_state_version 1.0" in text
    replicas["transformer"].release.set()
    await held

    doc = document(replicas, version=2)
    del doc["revisions"]["other-predictor-00001"]
    doc["services"].pop()
    gateway.apply(RoutingState.from_dict(doc))
    text = await scrape()
    assert "other-predictor-00001" not in text
    assert "sklearn-iris-transformer-00001" in text and "gateway_requests_in_flight{" not in text


async def test_through_a_queue_proxy_the_app_sees_the_clients_host_and_no_knative_headers(
    start_gateway, client
) -> None:
    """gateway -> queue-proxy -> app: the queue-proxy strips the revision headers the gateway added and keeps the
    Host the client sent (the gateway sends no K-Original-Host); each hop adds its Server-Timing entry."""
    from aiohttp import web

    from common.lifecycle import bound_port
    from queue_proxy.app import QueueProxy
    from queue_proxy.config import QueueProxyConfig
    from tests.queue_proxy.upstream import Upstream

    app = Upstream()
    runner = web.AppRunner(app.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    qp = QueueProxy(QueueProxyConfig(upstream=f"127.0.0.1:{bound_port(runner)}", port=0, grpc_port=0, admin_port=0,
                                     stats_port=0, metrics_port=0, drain_quiet_period=0.1))  # fmt: skip
    await qp.start()
    try:
        doc = iris_document({"other-predictor-00001": [endpoint(f"127.0.0.1:{qp.ports['http']}")]})
        gateway = await start_gateway(doc)
        async with client.get(url(gateway, "/headers"), headers={"Host": "other.prod.example.com"}) as response:
            assert response.status == 200
            headers = response.headers
        seen = app.seen_headers[-1]
        assert seen["Host"] == "other.prod.example.com"
        assert not any(name.lower().startswith("knative-serving-") for name in seen)
        assert seen["X-Request-Id"] == headers["X-Request-Id"]
        assert [entry.split(";")[0] for entry in headers["Server-Timing"].split(", ")] == ["app", "queue-proxy",
                                                                                            "gateway"]  # fmt: skip
    finally:
        await qp.stop()
        await runner.cleanup()


async def test_without_a_grpc_port(replicas, start_gateway, client) -> None:
    gateway = await start_gateway(document(replicas), grpc_port=-1)
    assert "grpc" not in gateway.ports and gateway.grpc is None
    status, body, _ = await call(client, gateway, "/v2/models/other-model/infer")
    assert (status, body["backend"]) == (200, "other")


async def test_a_client_leaving_in_the_fast_lane_releases_its_replica_and_counts_499(
    replicas, start_gateway, client
) -> None:
    from common.proxy import Relay

    gateway = await start_gateway(document(replicas, canary=0))
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.ports["http"])
    writer.write(b"GET /hold HTTP/1.1\r\nHost: sklearn-iris-predictor.default.example.com\r\n\r\n")
    await eventually(lambda: replicas["predictor-1"].holding == 1)
    relays = [c.active for c in gateway.servers["http"].connections if isinstance(c.active, Relay)]
    assert len(relays) == 1 and gateway.backends.in_flight() == {"sklearn-iris-predictor-00001": 1}
    writer.close()
    await writer.wait_closed()
    await eventually(lambda: replicas["predictor-1"].holding == 0 and not any(gateway.backends.in_flight().values()))
    async with client.get(url(gateway, "/metrics", "metrics")) as response:
        text = await response.text()
    counted = [line for line in text.splitlines() if line.startswith("gateway_requests_total{")
               and "sklearn-iris-predictor-00001" in line and 'response_code_class="4xx"' in line]  # fmt: skip
    assert len(counted) == 1 and counted[0].endswith(" 1.0")
