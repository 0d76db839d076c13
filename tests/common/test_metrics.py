"""LoopHistogram exposes exactly what a prometheus_client Histogram does for the same observations; CountOf exposes
what a prometheus_client Counter incremented once per observation does."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from common.metrics import CountOf, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)
VALUES = (0.0005, 0.001, 0.002, 0.05, 0.5, 3.0, 0.01)


def test_same_exposition_as_prometheus_client_histogram():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = LoopHistogram("x_seconds", "help", ("model_name",), BUCKETS, ours)
    slow = Histogram("x_seconds", "help", ("model_name",), buckets=BUCKETS, registry=theirs)
    for value in VALUES:
        fast.labels("m").observe(value)
        slow.labels("m").observe(value)
    fast.labels("idle")
    slow.labels("idle")
    text = generate_latest(ours).decode()
    reference = "".join(  # prometheus_client adds *_created series; ours has none, by design
        line + "\n" for line in generate_latest(theirs).decode().splitlines() if "_created" not in line
    )
    assert text == reference
    assert 'x_seconds_bucket{le="0.001",model_name="m"} 2.0' in text  # bounds are inclusive
    assert 'x_seconds_count{model_name="m"} 7.0' in text


def test_remove_and_clear():
    registry = CollectorRegistry()
    histogram = LoopHistogram("y", "help", ("a",), BUCKETS, registry)
    histogram.labels("1").observe(1)
    histogram.labels("2").observe(1)
    histogram.remove("1")
    text = generate_latest(registry).decode()
    assert 'a="1"' not in text and 'a="2"' in text
    histogram.clear()
    assert 'a="2"' not in generate_latest(registry).decode()


def test_count_of_is_a_counter_of_the_observations():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histogram = LoopHistogram("x_seconds", "help", ("model_name",), BUCKETS, CollectorRegistry())
    count = CountOf("x_requests", "requests", histogram, ours)
    reference = Counter("x_requests", "requests", ("model_name",), registry=theirs)
    for value in VALUES:
        histogram.labels("m").observe(value)
        reference.labels("m").inc()
    histogram.labels("idle")
    reference.labels("idle")
    text = generate_latest(ours).decode()
    lines = generate_latest(theirs).decode().splitlines()
    assert text == "".join(line + "\n" for line in lines if "_created" not in line)
    assert 'x_requests_total{model_name="m"} 7.0' in text and count.value("m") == 7 and count.value("gone") == 0
    histogram.remove("m")
    assert 'model_name="m"' not in generate_latest(ours).decode()
