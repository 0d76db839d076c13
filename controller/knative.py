"""Knative's autoscaling annotations (``autoscaling.knative.dev/*``): the keys servelane reads, both spellings of
each, and the checks Knative's webhook makes on their values (knative.dev/serving ``pkg/apis/autoscaling``).

Pure functions. A bad key or value raises :class:`ValueError` with a message the caller prefixes with the field's
path (``controller.spec`` turns it into a ``SpecError``). Values stay the strings the user wrote; :func:`seconds`
reads the duration ones (``window``, ``scale-down-delay``, ...) for the autoscaler.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

PREFIX = "autoscaling.knative.dev/"
METRICS = ("concurrency", "rps")
KPA = "kpa.autoscaling.knative.dev"
_NO_HPA = "no HPA here: servelane scales on concurrency or rps"
REFUSED_METRICS = {"cpu": _NO_HPA, "memory": _NO_HPA}
# How the KPA averages a metric over its stable window (`window`) and panic window: Knative accepts both spellings of
# the weighted one ("weightedExponential" is its alternate casing). Knative checks the value only for the KPA class,
# the only class servelane takes, so it is always checked here.
AGGREGATION_ALGORITHMS = ("linear", "weighted-exponential", "weightedExponential")

Check = Callable[[str], None]


def canonical_key(key: str) -> str:
    """``autoscaling.knative.dev/minScale`` or ``.../min-scale`` → ``autoscaling.knative.dev/min-scale``."""
    name = key.removeprefix(PREFIX)
    name = _ALIASES.get(name, name)
    if name not in _CHECKS:
        raise ValueError(f"not a supported Knative autoscaling annotation (supported: {', '.join(_CHECKS)})")
    return PREFIX + name


def check(key: str, value: str) -> None:
    """Knative's check of ``value`` for the canonical ``key``."""
    _CHECKS[key.removeprefix(PREFIX)](value)


def seconds(text: str) -> float | None:
    """A non-negative Go duration ("90s", "1m30s", "0") in seconds; None if it is not one."""
    if text == "0":
        return 0.0
    total, position = 0.0, 0
    for part in _DURATION_PART.finditer(text):
        if part.start() != position:
            return None
        total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        position = part.end()
    return total if position == len(text) and position else None


def choice(value: str, allowed: tuple[str, ...], refused: Mapping[str, str]) -> None:
    if value in refused:
        raise ValueError(f"{value!r} is not supported ({refused[value]})")
    if value not in allowed:
        raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")


def _integer(low: int) -> Check:
    def check(value: str) -> None:
        if not re.fullmatch(r"[+-]?\d+", value) or int(value) < low:
            raise ValueError(f"expected an integer of at least {low}, got {value!r}")

    return check


def _decimal(low: float, high: float = math.inf) -> Check:
    def check(value: str) -> None:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not low <= number <= high:  # also refuses nan
            bound = f"at least {low:g}" if high == math.inf else f"from {low:g} to {high:g}"
            raise ValueError(f"expected a number {bound}, got {value!r}")

    return check


def _duration(low: float, high: float) -> Check:
    def check(value: str) -> None:
        found = seconds(value)
        if found is None or not low <= found <= high:
            raise ValueError(f"expected a duration from {low:g}s to {high:g}s (such as 60s or 1m30s), got {value!r}")

    return check


def _choice(allowed: tuple[str, ...], refused: Mapping[str, str]) -> Check:
    return lambda value: choice(value, allowed, refused)


_CHECKS: dict[str, Check] = {
    "min-scale": _integer(0),
    "max-scale": _integer(0),
    "initial-scale": _integer(0),
    "target": _decimal(0.01),
    "metric": _choice(METRICS, REFUSED_METRICS),
    "class": _choice((KPA,), {"hpa.autoscaling.knative.dev": _NO_HPA}),
    "window": _duration(6, 3600),
    "panic-window-percentage": _decimal(1, 100),
    "panic-threshold-percentage": _decimal(110, 1000),
    "target-utilization-percentage": _decimal(1, 100),
    "scale-down-delay": _duration(0, 3600),
    "scale-to-zero-pod-retention-period": _duration(0, 3600),
    "activation-scale": _integer(1),
    "target-burst-capacity": _decimal(-1),
    "metric-aggregation-algorithm": _choice(AGGREGATION_ALGORITHMS, {}),
}
_ALIASES = {  # Knative's older camelCase spellings
    "minScale": "min-scale",
    "maxScale": "max-scale",
    "initialScale": "initial-scale",
    "panicWindowPercentage": "panic-window-percentage",
    "panicThresholdPercentage": "panic-threshold-percentage",
    "targetUtilizationPercentage": "target-utilization-percentage",
    "scaleDownDelay": "scale-down-delay",
    "targetBurstCapacity": "target-burst-capacity",
    "metricAggregationAlgorithm": "metric-aggregation-algorithm",
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
