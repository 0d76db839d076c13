"""The queue-proxy's Prometheus metrics (the metrics port, 9091), on a registry of their own.

Every series carries ``revision_name``, ``namespace_name``, ``configuration_name`` and ``pod_name`` (fixed for
the process); the request series add ``response_code_class`` (``2xx``, ``5xx``, ...), never the raw path:

- ``queue_requests_total``: requests answered.
- ``queue_request_duration_seconds``: arrival to the end of the response, queue wait included (Knative's
  ``request_latencies``).
- ``queue_app_request_duration_seconds``: from getting a breaker slot to the end of the response, the model
  server's share (Knative's ``app_request_latencies``); not observed for requests that never reached it.
- ``queue_depth``: requests admitted by the breaker, waiting or running (Knative's queue depth, breaker
  ``InFlight``); no series unless :meth:`QueueProxyMetrics.track` is given one, so a queue-proxy without a
  breaker (containerConcurrency 0) can report none, as in Knative.
- ``queue_requests_in_flight``: requests the queue-proxy is handling now, waiting or at the model server.

Probes are never recorded, and that is the caller's duty: it does not call :meth:`QueueProxyMetrics.observe`
for kubelet, activator or network probes (a ``kube-probe/`` User-Agent or any ``K-Network-Probe``).

The histograms are :class:`common.metrics.LoopHistogram` (lock-free), so observations and scrapes must both
happen on the event loop: serve the registry through :meth:`QueueProxyMetrics.handler`, never from a thread.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.exposition import choose_encoder

from common.httpserver import Handler, Request, Response, get_routes
from common.metrics import CountOf, HistogramChild, LoopHistogram

# Seconds. The low end resolves the hop itself: the queue-proxy adds about 0.1 ms and a small model on CPU answers
# in about 1 ms, which Knative's own buckets (from 5 ms) would lump together. The high end is the longest revision
# timeout Knative allows (600 s; 300 s by default), so a request that ran to its timeout still lands in a finite
# bucket. In between, roughly 1-2.5-5 steps per decade.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)
COMMON_CLASSES = (2, 3, 4, 5)  # pre-created, so the series exist at zero before the first request
REVISION_LABELS = ("revision_name", "namespace_name", "configuration_name", "pod_name")
REQUEST_LABELS = (*REVISION_LABELS, "response_code_class")

_Series = tuple[HistogramChild, HistogramChild]


class QueueProxyMetrics:
    def __init__(self, revision: str, namespace: str, configuration: str, pod: str) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._revision = (revision, namespace, configuration, pod)
        self.duration = LoopHistogram(
            "queue_request_duration_seconds", "Time from arrival to the end of the response, queue wait included",
            REQUEST_LABELS, LATENCY_BUCKETS, self.registry,
        )
        # every answered request is observed in ``duration``: the counter is its count
        self.requests = CountOf(
            "queue_requests", "Requests answered by the queue-proxy, by status class", self.duration, self.registry
        )
        self.app_duration = LoopHistogram(
            "queue_app_request_duration_seconds", "Time at the model server: from a breaker slot to the response end",
            REQUEST_LABELS, LATENCY_BUCKETS, self.registry,
        )
        self.queue_depth = Gauge(
            "queue_depth", "Requests admitted by the breaker, waiting for a slot or running", REVISION_LABELS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "queue_requests_in_flight", "Requests the queue-proxy is handling, waiting or at the model server",
            REVISION_LABELS, registry=self.registry,
        )
        self._by_class: dict[int, _Series] = {}
        for code_class in COMMON_CLASSES:
            self._add_class(code_class)

    def __repr__(self) -> str:
        return f"<QueueProxyMetrics revision={self._revision[0]!r} pod={self._revision[3]!r}>"

    def observe(self, status: int, total_seconds: float, app_seconds: float | None = None) -> None:
        """Record one answered request (never a probe); ``app_seconds`` is None when it never reached the app."""
        code_class = status // 100
        total, app = self._by_class.get(code_class) or self._add_class(code_class)
        total.observe(total_seconds)
        if app_seconds is not None:
            app.observe(app_seconds)

    def track(
        self, *, queue_depth: Callable[[], float] | None = None, in_flight: Callable[[], float] | None = None
    ) -> None:
        """Read the gauges from these functions at every scrape; a gauge never given one has no series.

        ``queue_depth`` is the breaker's ``in_flight``; leave it out when there is no breaker (Knative reports no
        queue depth then). ``in_flight`` counts the requests being handled, queued or at the model server.
        """
        if queue_depth is not None:
            self.queue_depth.labels(*self._revision).set_function(queue_depth)
        if in_flight is not None:
            self.in_flight.labels(*self._revision).set_function(in_flight)

    def handler(self) -> Handler:
        """The metrics port: ``GET /metrics`` in Prometheus text, or OpenMetrics when the scraper asks for it."""
        return get_routes({"/metrics": self._serve})

    async def _serve(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(200, [("Content-Type", content_type)], encoder(self.registry))

    def _add_class(self, code_class: int) -> _Series:
        labels = (*self._revision, f"{code_class}xx")
        series = (self.duration.labels(*labels), self.app_duration.labels(*labels))
        self._by_class[code_class] = series
        return series
