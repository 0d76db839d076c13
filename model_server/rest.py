"""The model server's REST edge: KServe V1, the Open Inference Protocol (V2), the repository API and /metrics.

Handlers decode with ``codec_rest``/``codec_v1``, call the :class:`DataPlane`, and encode. Errors become
``{"error": msg}`` bodies in one place, :func:`error_middleware`; unknown paths are 404 and wrong methods 405 in
the same shape. A 500 never carries a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from common.errors import PayloadTooLarge, ServelaneError
from common.http import error_response, json_response
from model_server import codec_rest, compression
from model_server.config import ModelServerConfig
from model_server.dataplane import DataPlane
from model_server.model import RequestContext

log = logging.getLogger(__name__)

DATAPLANE = web.AppKey("dataplane", DataPlane)
CONFIG = web.AppKey("config", ModelServerConfig)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_NAME = "{name:[^/:]+}"
_VERSIONED = ("", "/versions/{version:[^/]+}")


def build_app(dataplane: DataPlane, config: ModelServerConfig) -> web.Application:
    # client_max_size makes aiohttp refuse bodies over the limit (413) even when they arrive chunked.
    app = web.Application(middlewares=[error_middleware], client_max_size=config.max_request_bytes)
    app[DATAPLANE] = dataplane
    app[CONFIG] = config
    r = app.router
    r.add_get("/", root)
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    r.add_get("/v2", server_metadata)
    r.add_get("/v1/models", model_list)
    r.add_get("/v2/models", model_list)
    r.add_get(f"/v1/models/{_NAME}", v1_model_ready)
    r.add_post(f"/v1/models/{_NAME}:predict", v1_predict)
    r.add_post(f"/v1/models/{_NAME}:explain", v1_explain)
    for suffix in _VERSIONED:
        r.add_get(f"/v2/models/{_NAME}{suffix}", model_metadata)
        r.add_get(f"/v2/models/{_NAME}{suffix}/ready", model_ready)
        r.add_post(f"/v2/models/{_NAME}{suffix}/infer", v2_infer)
    r.add_post("/v2/repository/index", repository_index)
    r.add_post(f"/v2/repository/models/{_NAME}/load", repository_load)
    r.add_post(f"/v2/repository/models/{_NAME}/unload", repository_unload)
    r.add_get("/metrics", metrics)
    return app


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into an ``{"error"}`` response, and count inference requests by their final status."""
    try:
        response = await handler(request)
    except ServelaneError as exc:
        response = error_response(exc.http_status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, exc.text if exc.status == 413 else _reason(request, exc))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        response = error_response(500, "Internal server error")
    protocol = getattr(handler, "protocol", None)
    if protocol is not None:
        request.app[DATAPLANE].count(request.match_info["name"], protocol, response.status)
    return response


def _reason(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"Not Found: {request.method} {request.path}"
    if exc.status == 405:
        return f"Method Not Allowed: {request.method} {request.path}"
    return exc.reason


# -- health and metadata ---------------------------------------------------------------------------------------
async def root(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


async def live(request: web.Request) -> web.Response:
    return json_response({"live": request.app[DATAPLANE].live()})


async def ready(request: web.Request) -> web.Response:
    is_ready = await request.app[DATAPLANE].ready()
    return json_response({"ready": is_ready}, 200 if is_ready else 503)


async def server_metadata(request: web.Request) -> web.Response:
    return json_response(request.app[DATAPLANE].server_metadata())


async def model_list(request: web.Request) -> web.Response:
    return json_response({"models": request.app[DATAPLANE].model_names()})


async def v1_model_ready(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not await request.app[DATAPLANE].model_ready(name):
        return error_response(503, f"Model with name {name} is not ready.")
    return json_response({"name": name, "ready": True})


async def model_ready(request: web.Request) -> web.Response:
    name, version = request.match_info["name"], request.match_info.get("version")
    if not await request.app[DATAPLANE].model_ready(name, version):
        return error_response(503, f"Model with name {name} is not ready.")
    return json_response({"name": name, "ready": True})


async def model_metadata(request: web.Request) -> web.Response:
    dataplane = request.app[DATAPLANE]
    metadata = dataplane.model_metadata(request.match_info["name"], request.match_info.get("version"))
    return json_response(metadata.to_dict())


# -- inference -------------------------------------------------------------------------------------------------
def counted(protocol: str) -> Callable[[Handler], Handler]:
    """Mark an inference handler: error_middleware counts its requests by model, protocol and final status."""

    def mark(handler: Handler) -> Handler:
        handler.protocol = protocol  # type: ignore[attr-defined]
        return handler

    return mark


@counted("v2")
async def v2_infer(request: web.Request) -> web.StreamResponse:
    name, version = request.match_info["name"], request.match_info.get("version")
    request.app[DATAPLANE].model(name, version)
    body = await read_body(request)
    infer_request = codec_rest.decode_request(body, request.headers.get(codec_rest.IHCL), name, version)
    context = RequestContext("v2", headers=request.headers)  # type: ignore[arg-type]
    response = await request.app[DATAPLANE].infer(infer_request, context)
    payload, headers = codec_rest.encode_response(response, infer_request)
    return reply(request, payload, headers, context)


@counted("v1")
async def v1_predict(request: web.Request) -> web.StreamResponse:
    return await _v1(request, request.app[DATAPLANE].predict_v1)


@counted("v1")
async def v1_explain(request: web.Request) -> web.StreamResponse:
    return await _v1(request, request.app[DATAPLANE].explain_v1)


async def _v1(request: web.Request, operation: Callable[..., Awaitable[Any]]) -> web.StreamResponse:
    name = request.match_info["name"]
    request.app[DATAPLANE].model(name)
    body = codec_rest.loads(await read_body(request))
    context = RequestContext("v1", headers=request.headers)  # type: ignore[arg-type]
    result = await operation(name, body, context)
    return reply(request, codec_rest.dumps(result), {"Content-Type": "application/json"}, context)


async def read_body(request: web.Request) -> bytes:
    limit = request.app[CONFIG].max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes is over the limit of {limit} bytes")
    body = await request.read()
    encoding = request.headers.get("Content-Encoding")
    return compression.decompress(body, encoding, limit) if encoding else body


def reply(
    request: web.Request, payload: bytes, headers: dict[str, str], context: RequestContext
) -> web.Response:
    headers.update(context.response_headers)
    if context.timings:
        headers["Server-Timing"] = server_timing(context.timings)
    request_id = request.headers.get("x-request-id")
    if request_id:
        headers["x-request-id"] = request_id
    if len(payload) >= request.app[CONFIG].compress_min_bytes:
        encoding = compression.choose(request.headers.get("Accept-Encoding"))
        if encoding:
            payload = compression.compress(payload, encoding)
            headers["Content-Encoding"] = encoding
            headers["Vary"] = "Accept-Encoding"
    return web.Response(body=payload, headers=headers)


# -- repository ------------------------------------------------------------------------------------------------
async def repository_index(request: web.Request) -> web.Response:
    options = codec_rest.loads(await request.read() or b"{}")
    rows = request.app[DATAPLANE].repository.index()
    if isinstance(options, dict) and options.get("ready") is True:
        rows = [row for row in rows if row["state"] == "READY"]
    return json_response(rows)


async def repository_load(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[DATAPLANE].load(name)
    return json_response({"name": name, "load": True})


async def repository_unload(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[DATAPLANE].unload(name)
    return json_response({"name": name, "unload": True})


async def metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(request.app[DATAPLANE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


def server_timing(timings: dict[str, float]) -> str:
    return ", ".join([f"{name};dur={seconds * 1000:.3f}" for name, seconds in timings.items()])
