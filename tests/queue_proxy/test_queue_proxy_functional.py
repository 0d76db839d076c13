"""The queue-proxy in front of a real upstream over loopback: the breaker, timeouts, headers, streaming, probes,
drain, stats and metrics (Knative's queue-proxy checklist, items 1-23 where they apply)."""

from __future__ import annotations

import asyncio
import io
import time

import aiohttp
import pytest

from queue_proxy import probes

HOST = "127.0.0.1"


def url(qp, path: str, port: str = "http") -> str:
    return f"http://{HOST}:{qp.ports[port]}{path}"


async def fetch(client: aiohttp.ClientSession, target: str, **kw) -> tuple[int, bytes, dict[str, str]]:
    async with client.get(target, **kw) as response:
        return response.status, await response.read(), dict(response.headers)


# -- breaker -----------------------------------------------------------------------------------------------------
async def test_concurrency_limit_queue_and_exact_overflow(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port, container_concurrency=2)
    calls = [asyncio.create_task(fetch(client, url(qp, "/hold"))) for _ in range(25)]
    for _ in range(200):
        if qp.breaker.in_flight == 22 and sum(c.done() for c in calls) == 3 and upstream.running == 2:
            break
        await asyncio.sleep(0.01)
    refused = [c.result() for c in calls if c.done()]
    assert len(refused) == 3, "exactly the overflow beyond 2 running + 20 queued is refused, at once"
    assert all(status == 503 and b"pending request queue full" in body for status, body, _ in refused)
    assert upstream.running == 2
    upstream.release.set()
    results = await asyncio.gather(*calls)
    assert sorted(status for status, _, _ in results) == [200] * 22 + [503] * 3
    assert upstream.max_running == 2 and upstream.served == 22


async def test_unlimited_concurrency_forwards_everything_at_once(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port, container_concurrency=0)
    calls = [asyncio.create_task(fetch(client, url(qp, "/hold"))) for _ in range(50)]
    for _ in range(300):
        if upstream.running == 50:
            break
        await asyncio.sleep(0.01)
    assert upstream.running == 50
    upstream.release.set()
    assert [status for status, _, _ in await asyncio.gather(*calls)] == [200] * 50
    async with client.get(url(qp, "/metrics", "metrics")) as response:
        text = await response.text()
    assert "queue_requests_in_flight{" in text
    assert "queue_depth{" not in text  # Knative reports no queue depth without a breaker


# -- timeouts ----------------------------------------------------------------------------------------------------
async def test_total_timeout_is_504_and_cancels_the_upstream(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port, timeout=0.3)
    started = time.monotonic()
    status, body, _ = await fetch(client, url(qp, "/hold"))
    assert status == 504 and b"request timeout" in body
    assert 0.25 < time.monotonic() - started < 2
    for _ in range(100):
        if upstream.cancelled:
            break
        await asyncio.sleep(0.01)
    assert upstream.cancelled == 1 and upstream.running == 0


async def test_queued_request_that_runs_out_of_time_gets_504_not_503(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port, container_concurrency=1, timeout=0.3)
    first = asyncio.create_task(fetch(client, url(qp, "/hold")))
    await asyncio.sleep(0.05)
    status, body, _ = await fetch(client, url(qp, "/hold"))
    assert status == 504 and b"request timeout" in body
    upstream.release.set()
    assert (await first)[0] == 504  # it too ran past 0.3 s


async def test_response_start_timeout(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port, response_start_timeout=0.3)
    status, body, _ = await fetch(client, url(qp, "/late-start?delay=0.6"))
    assert status == 504 and b"request timeout" in body
    status, body, _ = await fetch(client, url(qp, "/late-start?delay=0.1&chunks=5&gap=0.15"))
    assert status == 200 and body == b"xxxxx"  # started in time, then streamed past the response-start timeout


async def test_idle_timeout_cuts_a_stalled_stream(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port, idle_timeout=0.3)
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(client, url(qp, "/stall"))
    status, body, _ = await fetch(client, url(qp, "/late-start?delay=0.6"))
    assert status == 504  # nothing written yet: a clean 504
    for _ in range(100):
        if upstream.cancelled:
            break
        await asyncio.sleep(0.01)
    assert upstream.cancelled == 1


async def test_upstream_refusing_connections_is_502(start_queue_proxy, client):
    from common.lifecycle import free_port

    qp = await start_queue_proxy(free_port())
    async with client.get(url(qp, "/anything")) as response:
        assert response.status == 502
        assert "connection failed" in (await response.json())["error"]


async def test_upstream_dying_mid_request_is_502_and_the_next_request_is_fine(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port)
    async with client.get(url(qp, "/die")) as response:
        assert response.status == 502
        assert "closed before" in (await response.json())["error"]
    assert (await fetch(client, url(qp, "/status/200")))[0] == 200


# -- headers -----------------------------------------------------------------------------------------------------
async def test_headers_rewritten_for_the_model_server(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port)
    sent = {
        "Knative-Serving-Revision": "iris-00001",
        "Knative-Serving-Namespace": "default",
        "K-Original-Host": "iris.default.example.com",
        "X-Forwarded-For": "1.2.3.4",
        "X-Forwarded-Proto": "https",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=1",
        "x-request-id": "req-1",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "drop me",
    }
    status, body, headers = await fetch(client, url(qp, "/headers"), headers=sent)
    assert status == 200
    seen = upstream.seen_headers[-1]
    assert "Knative-Serving-Revision" not in seen and "Knative-Serving-Namespace" not in seen
    assert seen["Host"] == "iris.default.example.com" and "K-Original-Host" not in seen
    assert seen["Forwarded"] == "for=1.2.3.4;proto=https"
    assert seen["X-Forwarded-For"] == "1.2.3.4, 127.0.0.1"
    assert seen["traceparent"] == sent["traceparent"] and seen["tracestate"] == "vendor=1"
    assert seen["x-request-id"] == "req-1"
    assert "X-Hop" not in seen
    timing = headers["Server-Timing"]
    assert timing.startswith("app;dur=1.000, queue-proxy;dur=")


async def test_forwarded_synthesised_from_the_connection_and_queue_wait_timed(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port, container_concurrency=4)
    _, _, headers = await fetch(client, url(qp, "/headers"))
    seen = upstream.seen_headers[-1]
    assert seen["Forwarded"].startswith("for=127.0.0.1;host=127.0.0.1:")
    assert seen["X-Forwarded-Proto"] == "http"
    assert "queue-wait;dur=" in headers["Server-Timing"]


async def test_request_body_streams_both_ways(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port)
    big = bytes(range(256)) * 8192  # 2 MiB: over the buffering limit, so it streams

    async def chunks():
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    for data, expected in ((io.BytesIO(big), big), (chunks(), big), (b"small", b"small")):
        async with client.post(url(qp, "/echo"), data=data) as response:
            body = await response.read()
            assert response.status == 200 and body == expected
            assert response.headers["X-Length"] == str(len(expected))


@pytest.mark.parametrize(
    "path,first,second", [("/chunked", b"first;", b"second"), ("/sse", b"data: one\n\n", b"data: two\n\n")]
)
async def test_streamed_responses_arrive_chunk_by_chunk(upstream, start_queue_proxy, client, path, first, second):
    qp = await start_queue_proxy(upstream.port)
    async with client.get(url(qp, path)) as response:
        assert response.status == 200
        got = await asyncio.wait_for(response.content.readexactly(len(first)), 2)
        assert got == first  # arrived while the upstream is still holding the rest
        upstream.chunk_gate.set()
        assert await response.content.read() == second


async def test_upstream_status_and_body_pass_through(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port)
    status, body, _ = await fetch(client, url(qp, "/status/418"))
    assert status == 418 and body == b"as asked"


# -- probes ------------------------------------------------------------------------------------------------------
KUBE_PROBE = {"User-Agent": "kube-probe/1.29", "K-Network-Probe": "queue"}


async def test_kubelet_probe_answers_queue_and_proxies_nothing(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port)
    status, body, _ = await fetch(client, url(qp, "/any/path"), headers=KUBE_PROBE)
    assert (status, body) == (200, b"queue")
    assert upstream.readiness_hits == 1 and upstream.served == 0
    status, body, _ = await fetch(client, url(qp, "/"), headers={"User-Agent": "kube-probe/1.29"})
    assert status == 400 and b"unexpected probe header value" in body


async def test_probe_turns_ready_as_soon_as_the_model_server_does(upstream, start_queue_proxy, client):
    upstream.ready = False
    qp = await start_queue_proxy(upstream.port)

    async def become_ready():
        await asyncio.sleep(0.3)
        upstream.ready = True

    flip = asyncio.create_task(become_ready())
    started = time.monotonic()
    probes_ = [asyncio.create_task(fetch(client, url(qp, "/"), headers=KUBE_PROBE)) for _ in range(2)]
    results = await asyncio.gather(*probes_)
    await flip
    assert [r[0] for r in results] == [200, 200]
    assert 0.25 < time.monotonic() - started < 1.0
    hits_for_two_probes = upstream.readiness_hits
    assert 5 <= hits_for_two_probes <= 10  # one probe sequence, every 50 ms, shared by both callers


async def test_probe_gives_up_with_503(upstream, start_queue_proxy, client, monkeypatch):
    monkeypatch.setattr(probes, "AGGRESSIVE_FOR", 0.4)
    upstream.ready = False
    qp = await start_queue_proxy(upstream.port)
    status, body, _ = await fetch(client, url(qp, "/"), headers=KUBE_PROBE)
    assert status == 503
    assert upstream.readiness_hits >= 5


async def test_network_probe_echoes_the_hash(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port)
    status, _, headers = await fetch(client, url(qp, "/"), headers={"K-Network-Probe": "probe", "K-Network-Hash": "h1"})
    assert status == 200 and headers["K-Network-Hash"] == "h1"
    status, _, _ = await fetch(client, url(qp, "/"), headers={"K-Network-Probe": "probe"})
    assert status == 400
    assert upstream.readiness_hits == 0


# -- drain -------------------------------------------------------------------------------------------------------
async def test_wait_for_drain_without_sigterm_resets(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port)
    waiting = asyncio.create_task(fetch(client, url(qp, "/wait-for-drain", "admin")))
    await asyncio.sleep(0.2)
    status, body, _ = await fetch(client, url(qp, "/"), headers=KUBE_PROBE)
    assert (status, body) == (503, b"shutting down")  # probes fail at once while draining...
    status, _, _ = await fetch(client, url(qp, "/headers"))
    assert status == 200  # ...while requests are still served
    status, body, _ = await waiting
    assert status == 200 and b"reset" in body
    assert (await fetch(client, url(qp, "/"), headers=KUBE_PROBE))[0] == 200


async def test_drain_waits_for_quiet_then_in_flight_requests(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port, drain_quiet_period=0.3)
    stop = asyncio.Event()
    held = [asyncio.create_task(fetch(client, url(qp, "/hold"))) for _ in range(5)]
    await asyncio.sleep(0.1)
    drainer = asyncio.create_task(qp.run_until_drained(stop))
    started = time.monotonic()
    stop.set()
    await asyncio.sleep(0.1)
    assert (await fetch(client, url(qp, "/"), headers=KUBE_PROBE))[0] == 503
    assert (await fetch(client, url(qp, "/headers")))[0] == 200  # served, and the quiet period starts again
    await asyncio.sleep(0.5)
    assert not drainer.done()  # quiet, but 5 requests are still in flight
    upstream.release.set()
    assert [r[0] for r in await asyncio.gather(*held)] == [200] * 5
    await asyncio.wait_for(drainer, 5)
    assert time.monotonic() - started >= 0.4
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(client, url(qp, "/headers"))


# -- stats and metrics -------------------------------------------------------------------------------------------
async def test_stats_count_requests_proxied_ones_and_queued_ones(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port, container_concurrency=1)
    held = [
        asyncio.create_task(fetch(client, url(qp, "/hold"), headers={"K-Proxy-Request": "activator"})) for _ in range(3)
    ]
    for _ in range(200):
        if upstream.running == 1 and qp.breaker.waiting == 2:
            break
        await asyncio.sleep(0.01)
    assert upstream.running == 1  # two wait in the breaker, and count as concurrency all the same
    qp.stats.cut()  # start a window in which all three are in
    await asyncio.sleep(0.05)
    report = qp.stats.cut()
    assert report.average_concurrency == pytest.approx(3)
    assert report.average_proxied_concurrency == pytest.approx(3)
    await fetch(client, url(qp, "/"), headers=KUBE_PROBE)  # probes never count
    upstream.release.set()
    await asyncio.gather(*held)
    async with client.get(url(qp, "/metrics", "metrics")) as response:
        text = await response.text()
    counted = [line for line in text.splitlines() if line.startswith("queue_requests_total{")]
    assert [line.rsplit(" ", 1)[1] for line in counted if 'response_code_class="2xx"' in line] == ["3.0"]
    assert all(line.endswith(" 0.0") for line in counted if 'response_code_class="2xx"' not in line)  # no probe
    assert 'pod_name="iris-00001-pod"' in text
    async with client.get(url(qp, "/metrics", "stats"), headers={"Accept": "application/json"}) as response:
        assert response.status == 200
        stat = await response.json()
    assert stat["pod_name"] == "iris-00001-pod"


# -- with the real model server ----------------------------------------------------------------------------------
async def test_oversized_body_gets_the_model_servers_413_through_the_proxy(
    start_model_server, iris_repository, start_queue_proxy, client
):
    server = await start_model_server(iris_repository, max_request_bytes=64 * 1024)
    qp = await start_queue_proxy(server.http_port)
    body = b'{"instances": [' + b"[1, 2, 3, 4], " * 200_000 + b"[1, 2, 3, 4]]}"  # ~2.8 MB: streamed upstream
    async with client.post(
        url(qp, "/v1/models/sklearn-iris:predict"), data=io.BytesIO(body), headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 413
        assert "limit" in (await response.json())["error"]

    async def chunks():
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    async with client.post(url(qp, "/v1/models/sklearn-iris:predict"), data=chunks()) as response:
        assert response.status == 413  # no length up front: the model server stops reading at its limit
    async with client.post(
        url(qp, "/v1/models/sklearn-iris:predict"), json={"instances": [[6.8, 2.8, 4.8, 1.4]]}
    ) as response:
        assert response.status == 200 and await response.json() == {"predictions": [1]}


async def test_a_proxied_answer_keeps_the_upstreams_date_and_server_once(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port)
    async with client.get(url(qp, "/headers")) as response:
        assert response.status == 200
        assert len(response.headers.getall("Date")) == 1
        assert response.headers.getall("Server") == [
            f"Python/3.{__import__('sys').version_info.minor} aiohttp/{aiohttp.__version__}"
        ]
    async with client.get(url(qp, "/"), headers={"User-Agent": "kube-probe/1.29"}) as response:  # answered here
        assert response.headers.getall("Server") == ["servelane"] and len(response.headers.getall("Date")) == 1


# -- the fast lane (requests with whole bodies, relayed by callbacks) ------------------------------------------------
def relays(qp) -> list:
    from common.proxy import Relay

    return [conn.active for conn in qp.servers["http"].connections if isinstance(conn.active, Relay)]


async def test_client_going_away_drops_the_upstream_call_and_is_counted_499(upstream, start_queue_proxy, client):
    qp = await start_queue_proxy(upstream.port, container_concurrency=4)
    reader, writer = await asyncio.open_connection(HOST, qp.ports["http"])
    writer.write(b"GET /hold HTTP/1.1\r\nHost: iris\r\n\r\n")
    for _ in range(200):
        if upstream.running:
            break
        await asyncio.sleep(0.01)
    assert upstream.running == 1 and len(relays(qp)) == 1  # held at the upstream, in the fast lane
    writer.close()
    await writer.wait_closed()
    for _ in range(200):
        if upstream.cancelled:
            break
        await asyncio.sleep(0.01)
    assert upstream.cancelled == 1 and qp.breaker.in_flight == 0 and qp.stats.concurrency == 0
    async with client.get(url(qp, "/metrics", "metrics")) as response:
        text = await response.text()
    assert [line for line in text.splitlines() if line.startswith("queue_requests_total{")
            and 'response_code_class="4xx"' in line][0].endswith(" 1.0")  # fmt: skip


async def test_a_kept_alive_connection_the_upstream_dropped_is_retried_once(start_queue_proxy, client):
    """The race a keep-alive pool lives with: the upstream drops an idle connection just as a request goes out on
    it. This upstream answers the first request on each connection and drops the connection at the second."""
    connections: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    server = await asyncio.start_server(serve, HOST, 0)
    try:
        qp = await start_queue_proxy(server.sockets[0].getsockname()[1])
        for _ in range(3):
            status, body, _ = await fetch(client, url(qp, "/x"))
            assert (status, body) == (200, b"ok")
        assert len(connections) == 3  # the second and third requests each went out twice: dropped, then retried
    finally:
        server.close()
        for writer in connections:
            writer.close()
        await asyncio.sleep(0.05)


async def test_pipelined_requests_are_answered_in_order(upstream, start_queue_proxy):
    qp = await start_queue_proxy(upstream.port)
    reader, writer = await asyncio.open_connection(HOST, qp.ports["http"])
    writer.write(b"".join(b"GET /status/%d HTTP/1.1\r\nHost: iris\r\n\r\n" % code for code in (201, 202, 203)))
    seen = []
    for _ in range(3):
        status_line = await reader.readline()
        seen.append(int(status_line.split()[1]))
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        assert await reader.readexactly(length) == b"as asked"
    writer.close()
    await writer.wait_closed()
    assert seen == [201, 202, 203]


async def test_head_requests_in_the_fast_lane(upstream, start_queue_proxy, client):
    """A response to HEAD announces a length it never sends: the relay must not wait for that body."""
    qp = await start_queue_proxy(upstream.port, timeout=5)
    for _ in range(2):  # the first on a new upstream connection, the second on a kept-alive one
        async with client.head(url(qp, "/status/200")) as response:
            assert response.status == 200 and response.headers["Content-Length"] == "8"
            assert await response.read() == b""
    status, body, _ = await fetch(client, url(qp, "/status/201"))  # and the connection after it still works
    assert (status, body) == (201, b"as asked")
