"""The gateway's Prometheus metrics (the metrics port), on a registry of their own.

Request series carry ``service_name``, ``namespace_name``, ``revision_name``, ``protocol`` (``http``/``grpc``) and
``response_code_class`` (``2xx``, ``4xx``, ...), never the Host or the path. A request that matched no service
(404) is recorded with empty service, namespace and revision, so unknown hosts cannot grow the label set.

- ``gateway_requests_total``: requests answered.
- ``gateway_request_duration_seconds``: from arrival to the end of the response (to the call's end for gRPC).
- ``gateway_requests_in_flight``: requests holding a backend now, by service, namespace and revision (read from
  the balancer at each scrape, so a revision with none in flight has no series).
- ``gateway_routing_state_version``: the version of the routing state in use (-1 before the first).

When a routing state drops a revision, :meth:`GatewayMetrics.retain` removes that revision's request series; a
request to it still in flight at that moment is not recorded, so a gone revision never comes back.

The histogram is a :class:`common.metrics.LoopHistogram` (lock-free): observe and scrape on the event loop only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from common.httpserver import Handler, Request, Response, get_routes
from common.metrics import CountOf, HistogramChild, LoopHistogram
from gateway.state import Revision

# Seconds; the same buckets as the queue-proxy's (see queue_proxy/metrics.py): from the hop's own ~0.1 ms to the
# longest revision timeout Knative allows (600 s), so the two hops' histograms line up.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)  # fmt: skip
REVISION_LABELS = ("service_name", "namespace_name", "revision_name")
REQUEST_LABELS = (*REVISION_LABELS, "protocol", "response_code_class")
UNROUTED = ("", "", "")



class GatewayMetrics:
    def __init__(self, in_flight: Callable[[], Mapping[str, int]], version: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.duration = LoopHistogram(
            "gateway_request_duration_seconds", "Time from arrival to the end of the response",
            REQUEST_LABELS, LATENCY_BUCKETS, self.registry,
        )  # fmt: skip
        # every answered request is observed in ``duration``: the counter is its count
        self.requests = CountOf("gateway_requests", "Requests answered by the gateway", self.duration, self.registry)
        self.version = Gauge(
            "gateway_routing_state_version", "Version of the routing state in use", registry=self.registry
        )
        self.version.set_function(version)
        self._revisions: dict[str, tuple[str, str, str]] = {}  # revision -> its label values
        self._series: dict[tuple[str | None, str, int], HistogramChild] = {}  # (revision, protocol, status)
        self.registry.register(_InFlight(in_flight, self._revisions))

    def __repr__(self) -> str:
        return f"<GatewayMetrics revisions={sorted(self._revisions)} series={len(self._series)}>"

    def observe(self, revision: str | None, protocol: str, status: int, seconds: float) -> None:
        """Record one answered request; ``revision`` None when the request matched none."""
        series = self._series.get((revision, protocol, status))
        if series is None:
            series = self._new_series(revision, protocol, status)
            if series is None:
                return  # the revision left the routing state while this request was in flight
        series.observe(seconds)

    def _new_series(self, revision: str | None, protocol: str, status: int) -> HistogramChild | None:
        """The histogram series of a (revision, protocol, status) seen for the first time: kept by exact status,
        which is one lookup per request (statuses of one class share their series)."""
        labels = UNROUTED if revision is None else self._revisions.get(revision)
        if labels is None:
            return None
        series = self.duration.labels(*labels, protocol, f"{status // 100}xx")
        self._series[(revision, protocol, status)] = series
        return series

    def retain(self, revisions: Mapping[str, Revision]) -> None:
        """The routing state changed: label values for its revisions; the series of any other are removed."""
        gone = {name: labels for name, labels in self._revisions.items() if name not in revisions}
        self._revisions.clear()
        self._revisions.update({n: (r.service, r.namespace, n) for n, r in revisions.items()})
        for key in [k for k in self._series if k[0] in gone]:
            revision, protocol, status = key
            del self._series[key]
            self.duration.remove(*gone[revision], protocol, f"{status // 100}xx")

    def handler(self) -> Handler:
        """The metrics port: ``GET /metrics`` in Prometheus text, or OpenMetrics when the scraper asks for it."""
        return get_routes({"/metrics": self._serve})

    async def _serve(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(200, [("Content-Type", content_type)], encoder(self.registry))


class _InFlight:
    """``gateway_requests_in_flight``, read from the balancer's counts at scrape time."""

    def __init__(self, counts: Callable[[], Mapping[str, int]], labels: Mapping[str, tuple[str, str, str]]) -> None:
        self._counts = counts
        self._labels = labels

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("gateway_requests_in_flight", "Requests holding a backend", labels=REVISION_LABELS)]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("gateway_requests_in_flight", "Requests holding a backend", labels=REVISION_LABELS)
        for revision, count in self._counts().items():
            labels = self._labels.get(revision, ("", "", revision))
            family.add_metric(list(labels), count)
        yield family
