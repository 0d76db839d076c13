"""controller.knative: Knative's autoscaling annotation keys, value checks and Go durations."""

from __future__ import annotations

import pytest

from controller import knative


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("0", 0.0),
        ("90s", 90.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("2m0.5s", 120.5),
        (".5s", 0.5),
    ],
)
def test_go_durations(text: str, seconds: float):
    assert knative.seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "60", "s", "1x", "1m 30s", "-1s", "1s2", "1.5"])
def test_not_go_durations(text: str):
    assert knative.seconds(text) is None


def test_both_spellings_of_a_key_are_one_key():
    assert knative.canonical_key("autoscaling.knative.dev/minScale") == "autoscaling.knative.dev/min-scale"
    assert knative.canonical_key("autoscaling.knative.dev/min-scale") == "autoscaling.knative.dev/min-scale"
    with pytest.raises(ValueError, match="not a supported Knative autoscaling annotation"):
        knative.canonical_key("autoscaling.knative.dev/stable-window")
    aggregation = "autoscaling.knative.dev/metric-aggregation-algorithm"
    assert knative.canonical_key("autoscaling.knative.dev/metricAggregationAlgorithm") == aggregation
    assert knative.canonical_key(aggregation) == aggregation


@pytest.mark.parametrize(
    "key, good, bad",
    [
        ("min-scale", "0", "1.5"),
        ("max-scale", "10", "-1"),
        ("target", "0.5", "0"),
        ("target-burst-capacity", "-1", "-2"),
        ("window", "6s", "5s"),
        ("panic-window-percentage", "10", "101"),
        ("scale-to-zero-pod-retention-period", "1m", "61m"),
        ("metric", "rps", "cpu"),
        ("class", "kpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev"),
        ("metric-aggregation-algorithm", "linear", "Linear"),
        ("metric-aggregation-algorithm", "weightedExponential", "WeightedExponential"),
        ("metric-aggregation-algorithm", "weighted-exponential", "weighted_exponential"),
    ],
)
def test_values_are_checked_as_knative_does(key: str, good: str, bad: str):
    knative.check(knative.PREFIX + key, good)
    with pytest.raises(ValueError):
        knative.check(knative.PREFIX + key, bad)
