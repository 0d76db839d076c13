"""Metric types for hot paths that run on one event loop.

prometheus_client's Histogram takes a lock and scans its buckets linearly on every observation; on a request
path that is observed several times per request, that is a measurable share of the CPU a request costs. A
:class:`LoopHistogram` is only ever touched from the event loop thread (observations and scrapes alike), so it
needs no lock and finds the bucket by bisection. It exposes the same text as a prometheus_client Histogram.
A :class:`CountOf` is a request counter for free: where every counted event is also observed by a histogram (a
request and its duration), the counter is that histogram's count per label set, summed at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric


class HistogramChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is the +Inf bucket
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class LoopHistogram:
    """A labelled histogram for single-threaded (event loop) use, registered as a collector."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(b) for b in sorted(buckets))
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = HistogramChild(self.bounds)
        return child

    def remove(self, *values: str) -> None:
        self._children.pop(values, None)

    def clear(self) -> None:
        self._children.clear()

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), child.counts):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric(list(values), buckets, child.sum)
        yield family


class CountOf:
    """A counter (``<name>_total``) that is ``histogram``'s observation count for each of its label sets, so a
    request path that observes the histogram pays nothing more for it; removing the histogram's series removes
    the counter's."""

    def __init__(self, name: str, documentation: str, histogram: LoopHistogram, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._histogram = histogram
        registry.register(self)

    def value(self, *values: str) -> int:
        child = self._histogram._children.get(values)
        return 0 if child is None else sum(child.counts)

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self._histogram.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self._histogram.labelnames)
        for values, child in list(self._histogram._children.items()):
            family.add_metric(list(values), sum(child.counts))
        yield family
