"""Composes the queue-proxy: the gated proxy on the serving ports, probes, drain, stats and metrics.

The main HTTP port, for every request, in this order (:meth:`QueueProxy.fast` takes the common case, a request
that is no probe and gets a breaker slot at once, without a task; :meth:`QueueProxy.handle` the rest; both keep
this order and record the same things):
  1. probes (kubelet user agents or a ``K-Network-Probe`` header) are answered here and never counted;
  2. the drainer notes the request (it restarts the quiet period while draining);
  3. stats count it as concurrency from now on (so queued requests count), proxied if the activator sent it;
  4. the breaker admits it (503 when the queue is full; the wait counts against the total timeout: 504);
  5. Knative's headers are rewritten and the request is streamed to the model server with the timeouts;
  6. the outcome is recorded in the Prometheus metrics.
The gRPC port applies 2-4 and 6 to every call through :mod:`common.grpc_proxy`. The admin port serves
``/wait-for-drain``; the stats port the autoscaler's ``Stat``; the metrics port Prometheus text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING

from common.breaker import Breaker
from common.errors import ServelaneError, UpstreamTimeout, http_status_of
from common.httpserver import Exchange, HttpServer, Request, Response, get_routes
from common.proxy import TIMEOUT_MESSAGE, ProxyClient, Timeouts, upstream_headers
from queue_proxy.config import QueueProxyConfig
from queue_proxy.drain import Drainer
from queue_proxy.metrics import QueueProxyMetrics
from queue_proxy.probes import UpstreamProber
from queue_proxy.stats import RequestStats, StatsReporter

if TYPE_CHECKING:
    from common.grpc_proxy import CallOutcome, GrpcProxy

log = logging.getLogger(__name__)

PROBE_AGENTS = ("kube-probe/", "Knative-Activator-Probe", "Knative-Autoscaling-Probe")
# Never reach the model server, over HTTP or gRPC.
_KNATIVE_HEADERS = frozenset({"knative-serving-revision", "knative-serving-namespace", "k-original-host"})
_KNATIVE_FIELDS = frozenset(name.encode() for name in _KNATIVE_HEADERS)
_NO_QUEUE_WAIT = MappingProxyType({"queue-wait": 0.0})  # Server-Timing of a request that got its slot at once


class QueueProxy:
    def __init__(self, config: QueueProxyConfig) -> None:
        self.config = config
        concurrency = config.container_concurrency
        self.breaker = Breaker(concurrency) if concurrency > 0 else None  # Knative: below 1, no breaker at all
        self.stats = RequestStats()
        self.reporter = StatsReporter(self.stats, config.pod)
        self.metrics = QueueProxyMetrics(config.revision, config.namespace, config.configuration, config.pod)
        # Knative reports a queue depth only where there is a breaker.
        self.metrics.track(
            queue_depth=self._queue_depth if self.breaker else None, in_flight=lambda: self.stats.concurrency
        )
        self.drainer = Drainer(config.drain_quiet_period)
        host, port = config.upstream.rsplit(":", 1)
        self.prober = UpstreamProber(host, int(port), config.readiness_path, config.probe_period)
        self.client = ProxyClient("queue-proxy", limit=concurrency or 1000)
        self.timeouts = Timeouts(config.timeout, config.response_start_timeout, config.idle_timeout)
        # Every port on the lean server (aiohttp would cost ~16 MB of RSS); bodies stream through the main one.
        self.servers = {
            "http": HttpServer(self.handle, fast=self.fast),
            "admin": HttpServer(get_routes({"/wait-for-drain": self.wait_for_drain})),
            "stats": HttpServer(self.reporter.handler()),
            "metrics": HttpServer(self.metrics.handler()),
        }
        self.grpc: GrpcProxy | None = None
        self.ports: dict[str, int] = {}
        self.running = False
        self._sigterm = asyncio.Event()
        self._drained = asyncio.Event()

    def __repr__(self) -> str:
        return f"<QueueProxy {self.config.upstream} ports={self.ports} {self.breaker!r} {self.drainer!r}>"

    # -- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        c = self.config
        self.running = True
        await self.client.start()
        await self.prober.start()
        self.reporter.start()
        for name, port in (("http", c.port), ("admin", c.admin_port), ("stats", c.stats_port),
                           ("metrics", c.metrics_port)):  # fmt: skip
            self.ports[name] = await self.servers[name].start(c.host, port)
        if c.upstream_grpc is not None:
            from common.grpc_proxy import build_grpc_proxy  # grpc costs ~9 MB of RSS: only when there is gRPC

            self.grpc = build_grpc_proxy(
                c.upstream_grpc, admit=self._grpc_admit, timeout=c.timeout, max_message_bytes=64 * 1024 * 1024,
                drop=_KNATIVE_HEADERS,
            )
            self.ports["grpc"] = await self.grpc.start(c.host, c.grpc_port)
        log.info("queue-proxy for %s listening on %s", c.upstream, self.ports)

    async def run_until_drained(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` (SIGTERM); then drain, stop accepting, and let in-flight requests finish."""
        await stop.wait()
        self._sigterm.set()
        self.drainer.start()
        await self.drainer.wait_quiet()
        self._drained.set()
        await self.stop()

    async def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        stopping = [self.servers["http"].stop(self.config.timeout)]
        if self.grpc is not None:
            stopping.append(self.grpc.stop(self.config.timeout))
        await asyncio.gather(*stopping)  # listeners closed at once; in-flight requests run to the end
        for name in ("admin", "stats", "metrics"):
            await self.servers[name].stop(1.0)
        await self.reporter.stop()
        await self.prober.close()
        await self.client.close()
        log.info("queue-proxy stopped")

    # -- the serving port --------------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        headers = request.headers
        if "K-Network-Probe" in headers or headers.get("User-Agent", "").startswith(PROBE_AGENTS):
            return await self._probe(request)
        started = time.perf_counter()
        proxied = headers.get("K-Proxy-Request") == "activator"
        status, app_started = 500, None
        self.drainer.touch()
        try:
            async with Admission(self, proxied, started) as admission:
                app_started = time.perf_counter()
                response = await self.client.forward(
                    request, self.config.upstream_url, headers=_upstream_headers(request), timeouts=self.timeouts,
                    started=started, timings=admission.timings,
                )
            status = response.status
            return response
        except ServelaneError as exc:
            status = exc.http_status
            return Response.error(exc.http_status, exc.message)
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code for it); not a failure of ours
            raise
        except Exception:
            log.exception("unhandled error proxying %s %s", request.method, request.path)
            return Response.error(500, "Internal server error")
        finally:
            now = time.perf_counter()
            self.metrics.observe(status, now - started, None if app_started is None else now - app_started)

    def fast(self, request: Request) -> Exchange | None:
        """The serving port's fast lane: relay the request by callbacks (:meth:`ProxyClient.relay`) if it is no
        probe and a breaker slot is free now; None leaves it to :meth:`handle` (a probe, or a request that must
        queue)."""
        if request.header(b"k-network-probe") is not None or (request.header(b"user-agent") or "").startswith(
            PROBE_AGENTS
        ):
            return None
        breaker = self.breaker
        if breaker is not None and not breaker.try_acquire():
            return None
        started = time.perf_counter()
        proxied = request.header(b"k-proxy-request") == "activator"
        self.drainer.touch()
        self.stats.request_in(proxied)

        def done(status: int) -> None:
            if breaker is not None:
                breaker.release()
            self.stats.request_out(proxied)
            seconds = time.perf_counter() - started
            self.metrics.observe(status, seconds, seconds)

        return self.client.relay(
            request, self.config.upstream_url, headers=_upstream_headers(request), on_done=done,
            timeouts=self.timeouts, started=started, timings=None if breaker is None else _NO_QUEUE_WAIT,
        )  # fmt: skip

    async def _probe(self, request: Request) -> Response:
        value = request.headers.get("K-Network-Probe")
        if value == "probe":  # the ingress's network probe: answered here, the model server is not touched
            probe_hash = request.headers.get("K-Network-Hash")
            if not probe_hash:
                return Response.text("probe hash missing", 400)
            if self.drainer.draining:
                return Response.text("shutting down", 503)
            return Response.text("queue", headers=[("K-Network-Hash", probe_hash)])
        if self.drainer.draining:
            return Response.text("shutting down", 503)
        if value != "queue":
            return Response.text(f"unexpected probe header value: {value}", 400)
        if await self.prober.probe():
            return Response.text("queue")
        return Response(503)

    # -- gRPC admission ----------------------------------------------------------------------------------------
    def _grpc_admit(self, metadata: dict[str, str]) -> GrpcAdmission:
        self.drainer.touch()
        return GrpcAdmission(self, metadata.get("k-proxy-request") == "activator")

    # -- admin -------------------------------------------------------------------------------------------------
    async def wait_for_drain(self, request: Request) -> Response:
        """A preStop hook's call: drain now; if no SIGTERM follows within a second, call it off (Knative)."""
        self.drainer.start()
        try:
            await asyncio.wait_for(self._sigterm.wait(), 1.0)
        except TimeoutError:
            self.drainer.reset()
            return Response.text("drain reset: no SIGTERM followed")
        await self._drained.wait()
        return Response.text("drained")

    # -- gauges ------------------------------------------------------------------------------------------------
    def _queue_depth(self) -> float:
        return float(self.breaker.in_flight) if self.breaker is not None else 0.0


class Admission:
    """One request's way through stats and the breaker (an async context manager without generator overhead).

    The breaker wait counts against the total timeout: a request still queued when it runs out gets 504, not 503.
    """

    __slots__ = ("qp", "proxied", "started", "admitted_at", "timings", "_admitted")

    def __init__(self, qp: QueueProxy, proxied: bool, started: float) -> None:
        self.qp, self.proxied, self.started = qp, proxied, started
        self.admitted_at = started
        self.timings: dict[str, float] | None = None
        self._admitted = False

    async def __aenter__(self) -> Admission:
        qp = self.qp
        qp.stats.request_in(self.proxied)
        try:
            breaker = qp.breaker
            if breaker is not None:
                if not breaker.try_acquire():
                    try:
                        async with asyncio.timeout(qp.config.timeout):
                            await breaker.acquire()
                    except TimeoutError:
                        raise UpstreamTimeout(TIMEOUT_MESSAGE) from None
                self._admitted = True
                self.admitted_at = time.perf_counter()
                self.timings = {"queue-wait": self.admitted_at - self.started}
        except BaseException:
            self._leave()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._leave()

    def _leave(self) -> None:
        qp = self.qp
        if self._admitted:
            qp.breaker.release()  # type: ignore[union-attr]
            self._admitted = False
        qp.stats.request_out(self.proxied)


class GrpcAdmission(Admission):
    """The same admission for a gRPC call, which also records the call's final status in the metrics: the status
    the proxy set on the outcome, or the error that kept the call from being admitted."""

    __slots__ = ("outcome",)

    def __init__(self, qp: QueueProxy, proxied: bool) -> None:
        from common.grpc_proxy import CallOutcome

        super().__init__(qp, proxied, time.perf_counter())
        self.outcome = CallOutcome()

    async def __aenter__(self) -> CallOutcome:  # type: ignore[override]
        try:
            await super().__aenter__()
        except ServelaneError as exc:
            self.qp.metrics.observe(exc.http_status, time.perf_counter() - self.started, None)
            raise
        except asyncio.CancelledError:  # the client went away, or the total timeout ran out, while queued
            self.qp.metrics.observe(499, time.perf_counter() - self.started, None)
            raise
        return self.outcome

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await super().__aexit__(exc_type, exc, tb)
        now = time.perf_counter()
        self.qp.metrics.observe(http_status_of(self.outcome.code), now - self.started, now - self.admitted_at)


def _upstream_headers(request: Request) -> bytes:
    """What the model server gets: Knative's routing headers gone, ``K-Original-Host`` back as Host."""
    return upstream_headers(request, drop=_KNATIVE_FIELDS, host=request.header(b"k-original-host"))
