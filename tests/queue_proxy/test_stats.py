"""Autoscaler stats: the time-weighted accounting on a fake clock (Knative checklist 20, 21), then the stats port
served on 127.0.0.1 (checklist 22) in protobuf and JSON."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from common.proto_gen.stat_pb2 import Stat
from queue_proxy.stats import RequestStats, StatReport, StatsReporter, prefers_json
from tests.harness import lean_server


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_two_half_second_requests_one_after_the_other_average_one(clock: FakeClock) -> None:
    stats = RequestStats(clock)
    stats.request_in()
    clock.now += 0.5
    stats.request_out()
    stats.request_in()
    clock.now += 0.5
    stats.request_out()
    assert stats.cut() == StatReport(1.0, 0.0, 2.0, 0.0)


def test_two_half_second_requests_side_by_side_average_one(clock: FakeClock) -> None:
    stats = RequestStats(clock)
    stats.request_in()
    stats.request_in()
    clock.now += 0.5
    stats.request_out()
    stats.request_out()
    clock.now += 0.5
    report = stats.cut()
    assert report.average_concurrency == pytest.approx(1.0)
    assert report.request_count == 2.0


def test_proxied_requests_count_in_both_total_and_proxied(clock: FakeClock) -> None:
    stats = RequestStats(clock)
    stats.request_in(proxied=True)
    stats.request_in(proxied=False)
    clock.now += 0.25
    stats.request_out(proxied=True)
    clock.now += 0.75
    stats.request_out(proxied=False)
    report = stats.cut()
    assert report == StatReport(
        average_concurrency=pytest.approx(1.25),
        average_proxied_concurrency=pytest.approx(0.25),
        request_count=2.0,
        proxied_request_count=1.0,
    )


def test_counts_are_per_second_of_the_actual_window(clock: FakeClock) -> None:
    stats = RequestStats(clock)
    for _ in range(3):
        stats.request_in()
        stats.request_out()
    clock.now += 2.0  # a late tick: the window ran 2 s, not the nominal 1 s
    assert stats.cut().request_count == pytest.approx(1.5)


def test_requests_in_flight_carry_over_into_the_next_window(clock: FakeClock) -> None:
    stats = RequestStats(clock)
    clock.now += 0.5
    stats.request_in(proxied=True)
    clock.now += 0.5
    assert stats.cut() == StatReport(0.5, 0.5, 1.0, 1.0)
    clock.now += 1.0
    assert stats.cut() == StatReport(1.0, 1.0, 0.0, 0.0)  # still in, but no new arrival
    stats.request_out(proxied=True)
    clock.now += 1.0
    assert stats.cut() == StatReport(0.0, 0.0, 0.0, 0.0)
    assert repr(stats) == "<RequestStats concurrency=0 proxied=0 arrivals=0 proxied_arrivals=0>"


def test_an_empty_window_reports_the_present_and_keeps_its_arrivals(clock: FakeClock) -> None:
    stats = RequestStats(clock)
    stats.request_in()
    assert stats.cut() == StatReport(1.0, 0.0, 0.0, 0.0)  # no time has passed: nothing to divide by
    clock.now += 1.0
    assert stats.cut() == StatReport(1.0, 0.0, 1.0, 0.0)  # the arrival is counted once, in a real window


@pytest.mark.parametrize(
    ("accept", "json"),
    [
        ("", False),
        ("*/*", False),
        ("application/protobuf", False),
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/json, application/protobuf", False),  # a tie goes to protobuf
        ("application/json;q=0.5, application/protobuf", False),
        ("application/protobuf;q=0.1, application/json", True),
        ("application/json;q=bogus", False),
    ],
)
def test_prefers_json(accept: str, json: bool) -> None:
    assert prefers_json(accept) is json


async def scrape(client: aiohttp.ClientSession, accept: str | None = None, path: str = "/metrics") -> tuple[str, bytes]:
    headers = {"Accept": accept} if accept else {}
    async with client.get(path, headers=headers) as response:
        assert response.status == 200
        return response.headers["Content-Type"], await response.read()


async def test_stats_port_serves_the_last_cut_as_protobuf(clock: FakeClock) -> None:
    stats = RequestStats(clock)
    reporter = StatsReporter(stats, "iris-00001-deployment-abc", clock=clock)
    async with lean_server(reporter.handler()) as client:
        content_type, body = await scrape(client, "application/protobuf")
        assert content_type == "application/protobuf"
        assert Stat.FromString(body) == Stat(pod_name="iris-00001-deployment-abc")  # before the first cut

        stats.request_in()
        clock.now += 0.5
        stats.request_out()
        clock.now += 0.5
        reporter.cut()
        first = Stat.FromString((await scrape(client, "application/protobuf"))[1])
        assert first.pod_name == "iris-00001-deployment-abc"
        assert (first.average_concurrent_requests, first.request_count) == (0.5, 1.0)
        assert first.process_uptime == pytest.approx(1.0)
        assert first.timestamp == 0  # the receiver stamps it

        clock.now += 1.0
        reporter.cut()
        content_type, body = await scrape(client, None, path="/")  # no Accept header: still protobuf
        second = Stat.FromString(body)
        assert content_type == "application/protobuf"
        assert second.process_uptime > first.process_uptime
        assert second.request_count == 0.0


async def test_stats_port_answers_json_when_asked(clock: FakeClock) -> None:
    stats = RequestStats(clock)
    reporter = StatsReporter(stats, "pod-a", clock=clock)
    stats.request_in(proxied=True)
    clock.now += 2.0
    reporter.cut()
    async with lean_server(reporter.handler()) as client:
        async with client.get("/metrics", headers={"Accept": "application/json"}) as response:
            assert response.headers["Content-Type"] == "application/json"
            assert await response.json() == {
                "pod_name": "pod-a",
                "average_concurrent_requests": 1.0,
                "average_proxied_concurrent_requests": 1.0,
                "request_count": 0.5,
                "proxied_request_count": 0.5,
                "process_uptime": 2.0,
                "in_flight": 1,  # now, not averaged: the request is still in
            }


async def test_reporter_task_cuts_every_period_until_stopped() -> None:
    stats = RequestStats()
    reporter = StatsReporter(stats, "pod-a", period=0.01)
    stats.request_in()
    reporter.start()
    with pytest.raises(RuntimeError, match="already started"):
        reporter.start()
    assert "running=True" in repr(reporter)
    async with asyncio.timeout(5):
        while reporter.last.request_count == 0:
            await asyncio.sleep(0.005)
    await reporter.stop()
    assert "running=False" in repr(reporter)
    assert reporter.last.average_concurrent_requests == pytest.approx(1.0, rel=0.1)
    assert reporter.last.process_uptime > 0
    await reporter.stop()  # a second stop is harmless


def test_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="period"):
        StatsReporter(RequestStats(), "pod-a", period=0)
