"""Pieces of the proxy core on their own: the upstream header block, and the relays' shared deadline sweep."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from common.httpserver import Request
from common.proxy import SWEEP_SECONDS, Deadlines, _own_forwarding, response_head, upstream_headers


def request(*fields: tuple[str, str]) -> Request:
    conn = SimpleNamespace(remote="10.0.0.9", upstream_fields=None)
    raw = [(name.encode(), value.encode()) for name, value in fields]
    return Request(conn, "POST", "/v1/models/m:predict", raw, "1.1")  # type: ignore[arg-type]


def lines(block: bytes) -> list[str]:
    return block.decode().split("\r\n")[:-1]


def test_upstream_headers_drop_hop_fields_and_add_forwarding():
    block = upstream_headers(
        request(("Host", "m.example.com"), ("Content-Length", "2"), ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"), ("Knative-Serving-Revision", "r1"), ("TE", "trailers"), ("x-request-id", "abc")),
        drop=frozenset({b"knative-serving-revision"}), host="m-predictor.default",
    )  # fmt: skip
    assert lines(block) == [
        "Host: m-predictor.default",
        "x-request-id: abc",
        "Forwarded: for=10.0.0.9;host=m.example.com;proto=http",
        "X-Forwarded-For: 10.0.0.9",
        "X-Forwarded-Proto: http",
        "X-Forwarded-Host: m.example.com",
    ]


def test_upstream_headers_extend_the_clients_forwarding_fields():
    block = upstream_headers(
        request(("Host", "h"), ("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "2.2.2.2"),
                ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "outer")),
    )  # fmt: skip
    assert lines(block) == [
        "Host: h",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Host: outer",
        "Forwarded: for=1.1.1.1;host=outer;proto=https",
        "X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.9",
    ]


def test_forwarding_fields_the_connection_header_names_are_replaced_not_trusted():
    block = upstream_headers(request(("Host", "h"), ("Connection", "X-Forwarded-Proto, Forwarded"),
                                     ("X-Forwarded-Proto", "https"), ("Forwarded", "for=6.6.6.6")))  # fmt: skip
    assert lines(block) == [
        "Host: h",
        "Forwarded: for=10.0.0.9;host=h;proto=http",
        "X-Forwarded-For: 10.0.0.9",
        "X-Forwarded-Proto: http",
        "X-Forwarded-Host: h",
    ]


def test_a_request_with_no_forwarding_fields_gets_them_from_its_connection_and_host():
    # the common case, whose forwarding lines are made once per connection and Host
    for _ in range(2):
        block = upstream_headers(request(("Host", "m.example.com"), ("Content-Length", "2"), ("X-Request-Id", "a")))
        assert lines(block) == [
            "Host: m.example.com",
            "X-Request-Id: a",
            "Forwarded: for=10.0.0.9;host=m.example.com;proto=http",
            "X-Forwarded-For: 10.0.0.9",
            "X-Forwarded-Proto: http",
            "X-Forwarded-Host: m.example.com",
        ]
    long_host = "h" * 300  # no DNS name is this long: answered the same, and not kept
    kept = _own_forwarding.cache_info().currsize
    block = upstream_headers(request(("Host", long_host)))
    assert lines(block)[1] == f"Forwarded: for=10.0.0.9;host={long_host};proto=http"
    assert _own_forwarding.cache_info().currsize == kept
    assert lines(upstream_headers(request(("Accept", "*/*")))) == [
        "Accept: */*",
        "Forwarded: for=10.0.0.9;proto=http",
        "X-Forwarded-For: 10.0.0.9",
        "X-Forwarded-Proto: http",
    ]


def test_a_connections_next_request_with_the_same_fields_reuses_the_block_and_any_change_makes_a_new_one():
    conn = SimpleNamespace(remote="10.0.0.9", upstream_fields=None)

    def on_conn(*pairs: tuple[str, str]) -> Request:
        raw = [(name.encode(), value.encode()) for name, value in pairs]
        return Request(conn, "POST", "/", raw, "1.1")  # type: ignore[arg-type]

    first = upstream_headers(on_conn(("Host", "a"), ("X-Trace", "1")))
    assert upstream_headers(on_conn(("Host", "a"), ("X-Trace", "1"))) is first  # kept, not made again
    assert lines(upstream_headers(on_conn(("Host", "a"), ("X-Trace", "2"))))[1] == "X-Trace: 2"
    assert lines(upstream_headers(on_conn(("Host", "a"), ("X-Trace", "2")), host="b"))[0] == "Host: b"
    dropped = upstream_headers(on_conn(("Host", "a"), ("X-Trace", "2")), drop=frozenset({b"x-trace"}))
    assert b"X-Trace" not in dropped
    assert upstream_headers(on_conn(("Host", "a"), ("X-Trace", "1"))) == first


def fields(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in pairs]


def test_response_head_drops_hop_fields_sets_server_timing_and_replaces_the_hops_own():
    raw = fields(
        ("Content-Type", "application/json"), ("CONNECTION", "keep-alive, X-Secret"), ("x-secret", "1"),
        ("Keep-Alive", "timeout=5"), ("server-timing", "predict;dur=1.0"), ("Content-Length", "19"),
        ("Server-Timing", "queue-proxy;dur=2.0"), ("X-Request-Id", "from-upstream"), ("X-Other", "kept"),
    )  # fmt: skip
    block, length, stream = response_head(raw, "gateway;dur=3.000", {"X-Request-Id": "mine"})
    assert (length, stream) == (19, False)
    assert lines(block) == [
        "Content-Type: application/json",
        "X-Other: kept",
        "Server-Timing: predict;dur=1.0, queue-proxy;dur=2.0, gateway;dur=3.000",
        "X-Request-Id: mine",
    ]


def test_response_head_of_a_head_answer_keeps_its_length_and_spots_event_streams():
    block, length, stream = response_head(fields(("Content-Length", "7")), "qp;dur=1", head_only=True)
    assert length == 7 and lines(block) == ["Content-Length: 7", "Server-Timing: qp;dur=1"]
    block, length, stream = response_head(fields(("content-type", "Text/Event-Stream; charset=utf-8")), "qp;dur=1")
    assert (length, stream) == (None, True)
    assert response_head(fields(("Content-Length", "x"), ("X-Note", "text/event-stream")), "qp;dur=1")[1:] == (
        None, False
    )  # fmt: skip
    assert lines(response_head([], "qp;dur=1")[0]) == ["Server-Timing: qp;dur=1"]


class Watched:
    def __init__(self, deadlines: Deadlines, then: Watched | None = None) -> None:
        self.deadlines, self.then = deadlines, then
        self.expired_at: float | None = None

    def expire(self) -> None:
        loop = asyncio.get_running_loop()
        self.expired_at = loop.time()
        if self.then is not None:  # an expiry that starts the next exchange sets its deadline from the sweep
            self.deadlines.set(self.then, loop.time() + 0.01)  # type: ignore[arg-type]


async def test_deadlines_fire_at_most_one_sweep_late_and_stop_sweeping_when_none_is_set():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    later = Watched(deadlines)
    first, cleared, never = Watched(deadlines, then=later), Watched(deadlines), Watched(deadlines)
    start = loop.time()
    deadlines.set(first, start + 0.02)  # type: ignore[arg-type]
    deadlines.set(cleared, start + 0.02)  # type: ignore[arg-type]
    deadlines.set(never, start + 60)  # type: ignore[arg-type]
    deadlines.clear(cleared)  # type: ignore[arg-type]
    await asyncio.sleep(0.02 + 3 * SWEEP_SECONDS)
    assert first.expired_at is not None and start + 0.02 <= first.expired_at <= start + 0.02 + 2 * SWEEP_SECONDS
    assert later.expired_at is not None and later.expired_at >= first.expired_at
    assert cleared.expired_at is None and never.expired_at is None
    assert deadlines._handle is not None  # one deadline is still set: the sweep goes on
    deadlines.clear(never)  # type: ignore[arg-type]
    await asyncio.sleep(2 * SWEEP_SECONDS)
    assert deadlines._handle is None  # nothing set: no timer runs
    deadlines.close()


def test_a_repeated_field_reads_as_its_first_value_and_names_ignore_case():
    req = request(("Host", "a"), ("X-Tag", "first"), ("x-tag", "second"), ("CONTENT-TYPE", "text/plain"))
    assert req.header(b"x-tag") == "first" and req.header(b"content-type") == "text/plain"
    assert req.header(b"absent") is None
    assert req.headers.getall("X-Tag") == ["first", "second"]  # the decoded view keeps every value, in order
