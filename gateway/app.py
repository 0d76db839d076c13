"""Composes the gateway: routing state in, HTTP and gRPC ingress on the proxy core, admin and metrics ports.

The HTTP port, for every request, in this order:
  1. ``x-request-id``: the client's, or a new one; it goes upstream and comes back on every response, errors too;
  2. the routing table in force when the request arrived matches its Host, or its path when the Host is the
     gateway's own (:mod:`gateway.routing`; 404 for no match), and picks a revision by tag or split;
  3. the balancer leases the revision's least busy ready replica (:mod:`gateway.balancer`; 503 for none);
  4. the request streams to that replica's queue-proxy (:class:`common.proxy.ProxyClient`, hop ``gateway``) with
     the client's own Host, ``Knative-Serving-Revision``/``-Namespace`` added (clients' copies dropped), trace
     headers as they came, and the revision's timeout as the total timeout (504); Server-Timing gets ``gateway``;
  5. the lease is released and the outcome recorded in the metrics.
Steps 1-5 run in :meth:`Gateway.fast` for a request with a whole body that routes to a replica (relayed by
callbacks, :meth:`common.proxy.ProxyClient.relay`), and in :meth:`Gateway.handle` for everything else.
Errors become responses here and only here (``{"error": ...}``, :meth:`common.httpserver.Response.error`, with
``X-Request-Id``; a 503 with ``Retry-After: 1``).
On an own-name Host, ``/v2/health/live``, ``/v2/health/ready`` and ``/v2`` are answered by the gateway itself.

The gRPC port does 1-5 per call through :mod:`common.grpc_proxy` and :mod:`gateway.grpc_routes`, behind
:mod:`gateway.grpc_front`, which shows them each call's ``:authority``. The admin port
serves ``/healthz``, ``/readyz`` (200 once a routing state is in force) and ``GET /routing`` (that state, JSON).

A new routing state (:meth:`Gateway.apply`) builds a new table and swaps it in with one assignment: requests
already routed keep their revision and their lease; gRPC channels to endpoints that left close when idle.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from typing import TYPE_CHECKING

from common.errors import ServelaneError, Unavailable
from common.httpserver import Exchange, Handler, HttpServer, Request, Response, get_routes
from common.proxy import ProxyClient, Timeouts, upstream_headers
from common.request_ids import RequestIds
from gateway.balancer import LeastOutstanding
from gateway.config import SERVER_NAME, SERVER_VERSION, GatewayConfig
from gateway.metrics import GatewayMetrics
from gateway.routing import Identity, RoutingTable, split_host
from gateway.sources import ControllerSource, FileSource
from gateway.state import Revision, RoutingState

if TYPE_CHECKING:
    from common.grpc_proxy import GrpcProxy
    from gateway.grpc_front import GrpcFront

log = logging.getLogger(__name__)

# Never taken from a client: the gateway sets the first two itself; the queue-proxy would make the third the Host.
_DROPPED = frozenset({b"knative-serving-revision", b"knative-serving-namespace", b"k-original-host"})
_LOCAL_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/v2"})
RETRY_AFTER = "1"  # seconds, on the gateway's own 503s


class Gateway:
    def __init__(self, config: GatewayConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.state: RoutingState | None = None
        self.table: RoutingTable | None = None
        self.identity = Identity.of(config.host, (), config.names)
        self.backends = LeastOutstanding(self.rng)
        self.request_ids = RequestIds()
        self.metrics = GatewayMetrics(self.backends.in_flight, lambda: -1 if self.state is None else self.state.version)
        self.client = ProxyClient("gateway")
        # Every port on the lean server; bodies stream through the serving one (the model server enforces its limit).
        self.servers = {
            "http": HttpServer(self.handle, fast=self.fast),
            "admin": HttpServer(self.admin_handler()),
            "metrics": HttpServer(self.metrics.handler()),
        }
        self.grpc: GrpcProxy | None = None
        self.grpc_front: GrpcFront | None = None  # the gRPC port when it reads :authority (config.grpc_authority)
        self.source: FileSource | ControllerSource | None = None
        self.ports: dict[str, int] = {}
        self.running = False

    def __repr__(self) -> str:
        return f"<Gateway ports={self.ports} {self.table!r}>"

    # -- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Read the routes file (a bad one raises InvalidInput), listen on every port (OSError if one is taken),
        then put the routes in force and follow them, or start long-polling the controller."""
        c = self.config
        if c.routes is not None:
            self.source = FileSource(c.routes, self.apply, interval=c.poll_interval)
            initial: RoutingState | None = self.source.load()
        else:
            assert c.controller is not None
            self.source = ControllerSource(c.controller, self.apply, wait=c.controller_wait, max_backoff=c.max_backoff)
            initial = None
        try:
            await self._listen()
        except BaseException:
            await self.stop()
            raise
        self.identity = Identity.of(c.host, (self.ports["http"], self.ports.get("grpc", self.ports["http"])), c.names)
        if initial is not None:
            self.apply(initial)
        self.source.start()
        log.info("gateway listening on %s", self.ports)

    async def _listen(self) -> None:
        c = self.config
        self.running = True
        await self.client.start()
        admin_host = c.host if c.admin_host is None else c.admin_host
        for name, host, port in (
            ("http", c.host, c.port), ("admin", admin_host, c.admin_port), ("metrics", c.host, c.metrics_port)
        ):  # fmt: skip
            self.ports[name] = await self.servers[name].start(host, port)
        if c.grpc_port >= 0:
            self.ports["grpc"] = await self._start_grpc()

    async def _start_grpc(self) -> int:
        from common.grpc_proxy import build_routing_grpc_proxy  # grpc costs ~9 MB of RSS: imported when used
        from gateway.grpc_routes import DROPPED, GrpcRouter, ServerMethods

        router = GrpcRouter(lambda: self.table, self.backends, self.metrics, self.request_ids)
        self.grpc = build_routing_grpc_proxy(
            route=router, max_message_bytes=self.config.max_message_bytes, drop=DROPPED,
            handlers=(ServerMethods(lambda: self.table),),
        )  # fmt: skip
        if not self.config.grpc_authority:
            return await self.grpc.start(self.config.host, self.config.grpc_port)
        from gateway.grpc_front import GrpcFront

        self.grpc_front = GrpcFront()
        await self.grpc.listen(self.grpc_front.backend)
        return await self.grpc_front.start(self.config.host, self.config.grpc_port)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` (SIGTERM/SIGINT), then shut down in order."""
        await stop.wait()
        await self.stop()

    async def stop(self) -> None:
        """Stop taking routes, close the listeners at once, let requests in flight finish, close the rest."""
        if not self.running:
            return
        self.running = False
        if self.source is not None:
            await self.source.stop()
        stopping = [self.servers["http"].stop(self.config.grace_period)]
        if self.grpc_front is not None:
            self.grpc_front.close()  # no new connections; calls on open ones finish through it
        if self.grpc is not None:
            stopping.append(self.grpc.stop(self.config.grace_period))
        await asyncio.gather(*stopping)
        if self.grpc_front is not None:
            await self.grpc_front.stop()
        for name in ("admin", "metrics"):
            await self.servers[name].stop(1.0)
        await self.client.close()
        log.info("gateway stopped")

    def apply(self, state: RoutingState) -> None:
        """Put a new routing state in force: one assignment of a new table; in-flight requests are untouched."""
        table = RoutingTable(state, self.identity, domain=self.config.domain, rng=self.rng)
        for conflict in table.conflicts:
            log.warning("routing state version %d: %s", state.version, conflict)
        self.backends.retain(state.revisions)
        self.metrics.retain(state.revisions)
        if self.grpc is not None:
            self.grpc.retain(e.grpc for r in state.revisions.values() for e in r.endpoints if e.grpc)
        self.state, self.table = state, table

    # -- the HTTP port -----------------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get("X-Request-Id") or ""
        reply = {"X-Request-Id": request_id or self.request_ids.new()}
        revision, status = None, 500
        try:
            table = self.table
            if table is None:
                raise Unavailable("no routing state loaded yet")
            host = request.headers.get("Host")
            if request.path in _LOCAL_PATHS and table.is_own(*split_host(host)):
                return self._answer_locally(request.path, reply)
            target = table.route(host, request.path, request.headers.get("Knative-Serving-Tag"))
            revision = target.name
            with self.backends.acquire(target) as lease:
                headers = _upstream_headers(request, target, request_id, reply)
                response = await self.client.forward(
                    request, f"http://{lease.address}", headers=headers, timeouts=_timeouts(target.timeout),
                    started=started, reply_headers=reply,
                )  # fmt: skip
            status = response.status
            return response
        except ServelaneError as exc:
            status = exc.http_status
            return _error(exc.http_status, exc.message, reply)
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code for it); not a failure of ours
            raise
        except Exception:
            log.exception("unhandled error routing %s %s", request.method, request.path)
            return _error(500, "Internal server error", reply)
        finally:
            self.metrics.observe(revision, "http", status, time.perf_counter() - started)

    def fast(self, request: Request) -> Exchange | None:
        """The HTTP port's fast lane: a request that routes to a backend is relayed by callbacks
        (:meth:`ProxyClient.relay`); None leaves the rest (no routing state yet, a local path, a 404, a 503) to
        :meth:`handle`, which answers them."""
        table, path = self.table, request.path
        if table is None or path in _LOCAL_PATHS:
            return None
        started = time.perf_counter()
        try:
            target = table.route(request.header(b"host"), path, request.header(b"knative-serving-tag"))
            lease = self.backends.acquire(target)
        except ServelaneError:
            return None
        request_id = request.header(b"x-request-id") or ""
        reply = {"X-Request-Id": request_id or self.request_ids.new()}

        def done(status: int) -> None:
            lease.release()
            self.metrics.observe(target.name, "http", status, time.perf_counter() - started)

        return self.client.relay(
            request, f"http://{lease.address}", headers=_upstream_headers(request, target, request_id, reply),
            on_done=done, timeouts=_timeouts(target.timeout), started=started, reply_headers=reply,
        )  # fmt: skip

    def _answer_locally(self, path: str, reply: dict[str, str]) -> Response:
        if path == "/v2":
            return Response.json(
                {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []}, headers=reply.items()
            )
        return Response(200, reply.items())  # live, and ready: a routing state is in force, or we would not be here

    # -- admin -------------------------------------------------------------------------------------------------
    def admin_handler(self) -> Handler:
        return get_routes({"/healthz": self._healthz, "/readyz": self._readyz, "/routing": self._routing})

    async def _healthz(self, request: Request) -> Response:
        return Response.text("ok")

    async def _readyz(self, request: Request) -> Response:
        if self.state is None:
            return Response.error(503, "no routing state yet")
        return Response.text(f"ready: routing state version {self.state.version}")

    async def _routing(self, request: Request) -> Response:
        if self.state is None:
            return Response.error(503, "no routing state yet")
        return Response.json(self.state.to_dict())


def _upstream_headers(request: Request, target: Revision, request_id: str, reply: dict[str, str]) -> bytes:
    """What the revision's queue-proxy gets: the request's headers (Knative's own dropped) plus its revision, and
    the request id the gateway made when the client sent none."""
    added = f"Knative-Serving-Revision: {target.name}\r\nKnative-Serving-Namespace: {target.namespace}\r\n"
    if not request_id:
        added += f"X-Request-Id: {reply['X-Request-Id']}\r\n"
    return upstream_headers(request, drop=_DROPPED) + added.encode("latin-1")


@functools.lru_cache(maxsize=64)
def _timeouts(total: float) -> Timeouts:
    """A revision's timeouts (the same few values every time; a frozen dataclass costs a microsecond to make)."""
    return Timeouts(total)


def _error(status: int, message: str, reply: dict[str, str]) -> Response:
    """The gateway's own error answer; a 503 (no routing state yet, no ready replica: a replica starting or being
    restarted) asks the client to come back in a second."""
    headers = reply.items() if status != 503 else [*reply.items(), ("Retry-After", RETRY_AFTER)]
    return Response.error(status, message, headers)
