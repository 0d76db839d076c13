"""What the autoscaler learns from a queue-proxy: Knative's time-weighted request stats, cut once a second.

:class:`RequestStats` is the accounting, pure and driven by an injected clock. Every arrival and departure first
adds ``concurrency × seconds since the last change`` to the current window; :meth:`RequestStats.cut` divides by
the window's length, so two half-second requests in a one-second window average 1.0, and turns arrivals into a
rate per second. The caller records a request on arrival, before the breaker, so requests waiting for a slot
count as concurrency (as in Knative); it marks requests that came through the activator (``K-Proxy-Request:
activator``) as proxied, which count in both the total and the proxied figures; and it leaves probes out.

:class:`StatsReporter` cuts a report every period on the event loop, keeps the last one, and serves it on the
stats port as Knative's ``Stat`` protobuf (``application/protobuf``, what Knative's autoscaler asks for and
insists on), or as JSON with the same field names when the Accept header prefers ``application/json``; the JSON
has one field of servelane's own beside them, ``in_flight``: the requests in the queue-proxy at the moment of the
scrape (waiting for a slot or in the model server), which ``servelane status`` shows beside the averages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from common.httpserver import Handler, Request, Response, get_routes
from common.proto_gen.stat_pb2 import Stat

Clock = Callable[[], float]

PROTOBUF = "application/protobuf"
JSON_FIELDS = (  # timestamp (7) is left out: the receiver stamps it, as Knative's autoscaler does
    "pod_name",
    "average_concurrent_requests",
    "average_proxied_concurrent_requests",
    "request_count",
    "proxied_request_count",
    "process_uptime",
)


@dataclass(frozen=True, slots=True)
class StatReport:
    """One window: averages are time-weighted concurrency, counts are arrivals per second."""

    average_concurrency: float
    average_proxied_concurrency: float
    request_count: float
    proxied_request_count: float


class RequestStats:
    """Time-weighted concurrency and arrival counts over a window that :meth:`cut` closes."""

    __slots__ = (
        "_arrivals", "_clock", "_concurrency", "_last_change", "_proxied_arrivals", "_proxied_concurrency",
        "_proxied_weighted", "_weighted", "_window_start",
    )

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._concurrency = self._proxied_concurrency = 0
        self._window_start = self._last_change = clock()
        self._weighted = self._proxied_weighted = 0.0  # concurrency × seconds since the window started
        self._arrivals = self._proxied_arrivals = 0

    def __repr__(self) -> str:
        return (
            f"<RequestStats concurrency={self._concurrency} proxied={self._proxied_concurrency}"
            f" arrivals={self._arrivals} proxied_arrivals={self._proxied_arrivals}>"
        )

    @property
    def concurrency(self) -> int:
        """Requests in now (waiting for a slot or at the upstream)."""
        return self._concurrency

    @property
    def proxied_concurrency(self) -> int:
        return self._proxied_concurrency

    def request_in(self, proxied: bool = False) -> None:
        self._advance(self._clock())
        self._concurrency += 1
        self._arrivals += 1
        if proxied:
            self._proxied_concurrency += 1
            self._proxied_arrivals += 1

    def request_out(self, proxied: bool = False) -> None:
        """Call exactly once for each :meth:`request_in`, with the same ``proxied``."""
        self._advance(self._clock())
        self._concurrency -= 1
        if proxied:
            self._proxied_concurrency -= 1

    def cut(self) -> StatReport:
        """Close the window and start the next; requests in flight carry over into it."""
        now = self._clock()
        self._advance(now)
        seconds = now - self._window_start
        if seconds <= 0:  # nothing to average over: report the present, keep the arrivals for the next window
            return StatReport(float(self._concurrency), float(self._proxied_concurrency), 0.0, 0.0)
        report = StatReport(
            self._weighted / seconds,
            self._proxied_weighted / seconds,
            self._arrivals / seconds,
            self._proxied_arrivals / seconds,
        )
        self._window_start = now
        self._weighted = self._proxied_weighted = 0.0
        self._arrivals = self._proxied_arrivals = 0
        return report

    def _advance(self, now: float) -> None:
        elapsed = now - self._last_change
        if elapsed > 0:  # a clock that stands still (or a fake one going back) adds nothing
            self._weighted += self._concurrency * elapsed
            self._proxied_weighted += self._proxied_concurrency * elapsed
            self._last_change = now


class StatsReporter:
    """Cuts ``stats`` every ``period`` seconds and serves the last cut as a ``Stat`` (see the module docstring)."""

    def __init__(self, stats: RequestStats, pod_name: str, clock: Clock = time.monotonic, period: float = 1.0) -> None:
        if period <= 0:
            raise ValueError("period must be positive")
        self.stats = stats
        self.pod_name = pod_name
        self.period = period
        self._clock = clock
        self._started = clock()
        self._last = Stat(pod_name=pod_name)  # what a scrape before the first cut gets, as in Knative
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        running = self._task is not None and not self._task.done()
        return f"<StatsReporter pod={self.pod_name!r} period={self.period} running={running}>"

    @property
    def last(self) -> Stat:
        """The last report cut (treat it as read-only)."""
        return self._last

    @property
    def uptime(self) -> float:
        return self._clock() - self._started

    def cut(self) -> Stat:
        report = self.stats.cut()
        self._last = Stat(
            pod_name=self.pod_name,
            average_concurrent_requests=report.average_concurrency,
            average_proxied_concurrent_requests=report.average_proxied_concurrency,
            request_count=report.request_count,
            proxied_request_count=report.proxied_request_count,
            process_uptime=self.uptime,
        )
        return self._last

    def start(self) -> None:
        """Start cutting every period on the running loop."""
        if self._task is not None:
            raise RuntimeError("StatsReporter already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stats-reporter")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # unlike awaiting the task, a cancellation of stop() itself still propagates

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.cut()

    def handler(self) -> Handler:
        """The stats port (on :class:`common.httpserver.HttpServer`): ``GET /metrics`` (and ``/``) answer the
        last report."""
        return get_routes({"/metrics": self._serve, "/": self._serve})

    async def _serve(self, request: Request) -> Response:
        stat = self._last
        if prefers_json(request.headers.get("Accept", "")):
            fields = {name: getattr(stat, name) for name in JSON_FIELDS}
            body = orjson.dumps({**fields, "in_flight": self.stats.concurrency})
            return Response(200, [("Content-Type", "application/json")], body)
        return Response(200, [("Content-Type", PROTOBUF)], stat.SerializeToString())


def prefers_json(accept: str) -> bool:
    """Whether an Accept header rates application/json above protobuf; protobuf wins ties and everything else."""
    json_q = protobuf_q = 0.0
    for item in accept.split(","):
        media, _, params = item.partition(";")
        media = media.strip().lower()
        if media == "application/json":
            json_q = max(json_q, _quality(params))
        elif media in (PROTOBUF, "application/x-protobuf"):
            protobuf_q = max(protobuf_q, _quality(params))
    return json_q > protobuf_q


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0
