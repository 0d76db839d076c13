"""Queue-proxy Prometheus metrics: what a few observations expose (parsed back with prometheus_client's own
parsers, so the exposition is valid), callback gauges read at scrape time, and the metrics port on 127.0.0.1."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from queue_proxy.metrics import QueueProxyMetrics
from tests.harness import lean_server

REVISION = {
    "revision_name": "iris-00001",
    "namespace_name": "default",
    "configuration_name": "iris",
    "pod_name": "iris-00001-pod",
}


def make_metrics() -> QueueProxyMetrics:
    return QueueProxyMetrics("iris-00001", "default", "iris", "iris-00001-pod")


def samples(text: str, name: str) -> dict[str, float]:
    """The samples called ``name`` keyed by status class (or "" without one); each must carry the revision labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                assert {k: v for k, v in sample.labels.items() if k in REVISION} == REVISION, sample
                found[sample.labels.get("response_code_class", "")] = sample.value
    return found


def samples_names(text: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def bucket(text: str, name: str, code_class: str, le: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name, sample.labels.get("response_code_class"), sample.labels.get("le")) == (
                f"{name}_bucket",
                code_class,
                le,
            ):
                return sample.value
    raise AssertionError(f"no {name} bucket le={le} for {code_class}")


def test_exposition_after_a_few_requests() -> None:
    metrics = make_metrics()
    metrics.observe(200, 0.0004, 0.0003)
    metrics.observe(200, 0.2, 0.15)
    metrics.observe(404, 0.002, 0.001)
    metrics.observe(503, 0.0001, None)  # refused by a full queue: never reached the app
    text = generate_latest(metrics.registry).decode()

    assert samples(text, "queue_requests_total") == {"2xx": 2.0, "3xx": 0.0, "4xx": 1.0, "5xx": 1.0}
    assert samples(text, "queue_request_duration_seconds_count") == {"2xx": 2.0, "3xx": 0.0, "4xx": 1.0, "5xx": 1.0}
    assert samples(text, "queue_app_request_duration_seconds_count") == {"2xx": 2, "3xx": 0, "4xx": 1, "5xx": 0}
    assert samples(text, "queue_request_duration_seconds_sum")["2xx"] == pytest.approx(0.2004)
    assert bucket(text, "queue_request_duration_seconds", "2xx", "0.0005") == 1.0
    assert bucket(text, "queue_request_duration_seconds", "2xx", "0.25") == 2.0
    assert bucket(text, "queue_app_request_duration_seconds", "2xx", "600.0") == 2.0
    assert bucket(text, "queue_app_request_duration_seconds", "2xx", "+Inf") == 2.0
    assert not {"queue_depth", "queue_requests_in_flight"} & samples_names(text)  # not tracked: no series


def test_an_uncommon_status_class_appears_when_first_seen() -> None:
    metrics = make_metrics()
    assert "1xx" not in samples(generate_latest(metrics.registry).decode(), "queue_requests_total")
    metrics.observe(101, 0.01)
    assert samples(generate_latest(metrics.registry).decode(), "queue_requests_total")["1xx"] == 1.0


def test_gauges_read_their_functions_at_scrape_time() -> None:
    metrics = make_metrics()
    state = {"depth": 3, "in_flight": 5}
    metrics.track(queue_depth=lambda: state["depth"], in_flight=lambda: state["in_flight"])
    text = generate_latest(metrics.registry).decode()
    assert samples(text, "queue_depth") == {"": 3.0}
    assert samples(text, "queue_requests_in_flight") == {"": 5.0}
    state["depth"] = 0
    assert samples(generate_latest(metrics.registry).decode(), "queue_depth") == {"": 0.0}


async def test_metrics_port_serves_prometheus_text_and_openmetrics() -> None:
    metrics = make_metrics()
    metrics.observe(200, 0.01, 0.005)
    async with lean_server(metrics.handler()) as client:
        text = await scrape(client, "")
        openmetrics = await scrape(client, "application/openmetrics-text; version=1.0.0")
    assert samples(text, "queue_requests_total")["2xx"] == 1.0
    assert "process_cpu_seconds_total" in samples_names(text)  # the queue-proxy's own CPU and memory
    assert openmetrics.endswith("# EOF\n")
    counts = [
        sample
        for family in parse_openmetrics(openmetrics)
        for sample in family.samples
        if sample.name == "queue_requests_total" and sample.labels["response_code_class"] == "2xx"
    ]
    assert counts == [Sample("queue_requests_total", {**REVISION, "response_code_class": "2xx"}, 1.0)]


async def scrape(client: aiohttp.ClientSession, accept: str) -> str:
    async with client.get("/metrics", headers={"Accept": accept}) as response:
        assert response.status == 200
        expected = "application/openmetrics-text" if "openmetrics" in accept else "text/plain; version=0.0.4"
        assert response.headers["Content-Type"].startswith(expected)
        return await response.text()
