"""The controller's admin API: one small versioned HTTP API on 127.0.0.1, for the gateway and the CLI.

    GET  /v1/routing?after=N&wait=S   the routing state (gateway/state.py) once its version is above N: 200 with the
                                      JSON document, or 304 and no body when S seconds (default 30, at most 300)
                                      pass first; the gateway's ``--controller`` source long-polls this
    POST /v1/apply                    {"documents": [{"text": YAML, "base_dir": DIR, "source": FILE}]}: parsed as
                                      InferenceServices and applied; 200 {"applied": [{"service", "namespace",
                                      "created", "warnings"}]} or 400 naming the field (a service defined
                                      twice, in one document or across them, included), nothing applied
    GET  /v1/status                   services, revisions, traffic and replicas, each replica's requests in flight
                                      now (``in_flight``) and averaged over the last second (``avg_concurrency``,
                                      Knative's stat), from its queue-proxy's stats port; null when it does not answer
    GET  /healthz                     200 while the controller runs; /readyz 200 once every route has a ready replica

Errors are mapped once, here, through common.errors (400 for a bad spec or request, 404 unknown path).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from common.errors import InvalidInput, ServelaneError
from common.http import error_response, json_response
from controller.controller import Controller
from controller.spec import check_unique, load_specs

CONTROLLER = web.AppKey("controller", Controller)
MAX_WAIT_KEY = web.AppKey("max_wait", float)
STATS_TIMEOUT = aiohttp.ClientTimeout(total=0.5)
MAX_WAIT = 300.0


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServelaneError as exc:
        return error_response(exc.http_status, exc.message)


def build_admin(controller: Controller, *, max_wait: float = MAX_WAIT) -> web.Application:
    """The admin API over ``controller``; a long poll waits at most ``max_wait`` seconds, whatever it asks."""
    app = web.Application(middlewares=[errors])
    app[CONTROLLER] = controller
    app[MAX_WAIT_KEY] = max_wait
    app.router.add_get("/v1/routing", routing)
    app.router.add_post("/v1/apply", apply)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def routing(request: web.Request) -> web.Response:
    after = _number(request, "after", -1, int)
    wait = _number(request, "wait", 30.0, float)
    if math.isnan(wait) or wait < 0:
        raise InvalidInput(f"query parameter wait must be a number of seconds >= 0, got {request.query['wait']!r}")
    wait = min(wait, request.app[MAX_WAIT_KEY])
    controller = request.app[CONTROLLER]
    state = controller.state if controller.state.version > after else await controller.wait_state(after, wait)
    if state is None:
        return web.Response(status=304)
    return json_response(state.to_dict())


async def apply(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        documents = body["documents"]
        specs = [
            spec
            for doc in documents
            for spec in load_specs(doc["text"], base_dir=Path(doc["base_dir"]), source=doc.get("source"))
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f'expected {{"documents": [{{"text", "base_dir", "source"}}]}}: {exc!r}') from None
    check_unique(specs)  # across the documents too, as `up` checks across its files; before anything changes
    applied = await request.app[CONTROLLER].apply(specs)
    return json_response(
        {
            "applied": [
                {"service": a.service, "namespace": a.namespace, "created": a.created, "warnings": a.warnings}
                for a in applied
            ]
        }
    )


async def status(request: web.Request) -> web.Response:
    report = request.app[CONTROLLER].status()
    replicas = [
        replica
        for service in report["services"]
        for revisions in service["components"].values()
        for revision in revisions
        for replica in revision["replicas"]
    ]
    async with aiohttp.ClientSession(timeout=STATS_TIMEOUT) as http:
        loads = await asyncio.gather(*(_load(http, r.get("stats")) for r in replicas))
    for replica, (in_flight, average) in zip(replicas, loads, strict=True):
        replica["in_flight"], replica["avg_concurrency"] = in_flight, average
    return json_response(report)


async def _load(http: aiohttp.ClientSession, stats: str | None) -> tuple[int | None, float | None]:
    """A replica's requests in flight now and its average concurrency over the last second; None for each its
    queue-proxy did not give."""
    if not stats:
        return None, None
    try:
        async with http.get(f"http://{stats}/", headers={"Accept": "application/json"}) as response:
            doc = await response.json()
        in_flight, average = doc.get("in_flight"), doc.get("average_concurrent_requests")
        return (
            int(in_flight) if isinstance(in_flight, (int, float)) else None,
            float(average) if isinstance(average, (int, float)) else None,
        )
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
        return None, None


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    if request.app[CONTROLLER].ready():
        return web.Response(text="ready")
    return error_response(503, "not every route has a ready replica yet")


def _number(request: web.Request, name: str, default: float, kind: type) -> Any:
    raw = request.query.get(name)
    if raw is None:
        return kind(default)
    try:
        return kind(raw)
    except ValueError:
        raise InvalidInput(f"query parameter {name} must be a number, got {raw!r}") from None
