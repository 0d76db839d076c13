"""The gateway's request series on their own: by status class, unrouted requests, and revisions that leave."""

from __future__ import annotations

from prometheus_client import generate_latest

from gateway.metrics import GatewayMetrics
from gateway.state import Revision

ONE = Revision("r1", "prod", "svc", "predictor")
TWO = Revision("r2", "prod", "svc", "predictor")


def series(metrics: GatewayMetrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_requests_total{")
    }


def test_statuses_of_one_class_share_a_series_and_a_gone_revision_is_not_recorded_again():
    metrics = GatewayMetrics(dict, lambda: 1)
    metrics.retain({"r1": ONE, "r2": TWO})
    for status in (200, 201, 200, 503):
        metrics.observe("r1", "http", status, 0.001)
    metrics.observe("r2", "grpc", 200, 0.001)
    metrics.observe(None, "http", 404, 0.001)
    r1 = 'namespace_name="prod",protocol="http",response_code_class="{}xx",revision_name="r1",service_name="svc"'
    r2 = 'namespace_name="prod",protocol="grpc",response_code_class="2xx",revision_name="r2",service_name="svc"'
    unrouted = 'namespace_name="",protocol="http",response_code_class="4xx",revision_name="",service_name=""'
    assert series(metrics) == {
        f"gateway_requests_total{{{r1.format(2)}}}": 3.0,
        f"gateway_requests_total{{{r1.format(5)}}}": 1.0,
        f"gateway_requests_total{{{r2}}}": 1.0,
        f"gateway_requests_total{{{unrouted}}}": 1.0,
    }
    metrics.retain({"r2": TWO})  # r1 left the routing state: its series go, and a late answer is not recorded
    metrics.observe("r1", "http", 200, 0.001)
    metrics.observe("r1", "http", 404, 0.001)
    assert series(metrics) == {f"gateway_requests_total{{{r2}}}": 1.0, f"gateway_requests_total{{{unrouted}}}": 1.0}
