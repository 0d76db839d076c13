"""The model server's REST edge: KServe V1, the Open Inference Protocol (V2), the repository API and /metrics.

Served by :class:`common.httpserver.HttpServer` (the lean HTTP/1.1 server the proxy hops use). Handlers decode
with ``codec_rest``/``codec_v1``, call the :class:`DataPlane`, and encode. Errors become ``{"error": msg}`` bodies
in one place, :meth:`RestEdge.handle`; unknown paths are 404 and wrong methods 405 (with ``Allow``) in the same
shape. A 500 never carries a traceback. Bodies are read whole, up to ``max_request_bytes`` (413 beyond, also
when they arrive chunked or inflate past it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client.exposition import choose_encoder

from common.errors import PayloadTooLarge, ServelaneError
from common.httpserver import HttpServer, Request, Response
from common.proxy import HOP_BY_HOP
from model_server import codec_rest, compression
from model_server.config import ModelServerConfig
from model_server.dataplane import DataPlane
from model_server.model import RequestContext

log = logging.getLogger(__name__)

Params = dict[str, str]
Handler = Callable[[Request, Params], Awaitable[Response]]
_NAME = r"(?P<name>[^/:]+)"
_VERSION = r"(?:/versions/(?P<version>[^/]+))?"
ROUTES_KEPT = 1024  # (method, path) pairs remembered with their route; the table starts over when full


class RestEdge:
    def __init__(self, dataplane: DataPlane, config: ModelServerConfig) -> None:
        self.dataplane = dataplane
        self.config = config
        # (pattern, {method: handler}, protocol counted for inference requests)
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler], str | None]] = [
            (re.compile(p), methods, counted)
            for p, methods, counted in (
                (r"/", {"GET": self.root}, None),
                (r"/v2/health/live", {"GET": self.live}, None),
                (r"/v2/health/ready", {"GET": self.ready}, None),
                (r"/v2", {"GET": self.server_metadata}, None),
                (r"/v[12]/models", {"GET": self.model_list}, None),
                (rf"/v1/models/{_NAME}", {"GET": self.v1_model_ready}, None),
                (rf"/v1/models/{_NAME}:predict", {"POST": self.v1_predict}, "v1"),
                (rf"/v1/models/{_NAME}:explain", {"POST": self.v1_explain}, "v1"),
                (rf"/v2/models/{_NAME}{_VERSION}", {"GET": self.model_metadata}, None),
                (rf"/v2/models/{_NAME}{_VERSION}/ready", {"GET": self.model_ready}, None),
                (rf"/v2/models/{_NAME}{_VERSION}/infer", {"POST": self.v2_infer}, "v2"),
                (r"/v2/repository/index", {"POST": self.repository_index}, None),
                (rf"/v2/repository/models/{_NAME}/load", {"POST": self.repository_load}, None),
                (rf"/v2/repository/models/{_NAME}/unload", {"POST": self.repository_unload}, None),
                (r"/metrics", {"GET": self.metrics}, None),
            )
        ]

        self._matched: dict[tuple[str, str], tuple[Handler, Params, str | None]] = {}

    def server(self) -> HttpServer:
        c = self.config
        return HttpServer(
            self.handle, buffer_limit=c.max_request_bytes, keepalive_timeout=c.keepalive_timeout,
            cancel_on_disconnect=False,
        )  # fmt: skip

    async def handle(self, request: Request) -> Response:
        """Route, run, and turn every error into an ``{"error"}`` response; count inference requests by their
        final status."""
        path, method = request.path, request.method
        params: Params = {}
        counted = None
        try:
            handler, params, counted = self._route(method, path)
            response = await handler(request, params)
        except ServelaneError as exc:
            response = Response.error(exc.http_status, exc.message)
        except _NoRoute as exc:
            response = exc.response
        except Exception:
            log.exception("unhandled error serving %s %s", method, path)
            response = Response.error(500, "Internal server error")
        if counted is not None:
            self.dataplane.count(params["name"], counted, response.status)
        return response

    def _route(self, method: str, path: str) -> tuple[Handler, Params, str | None]:
        """(handler, path parameters, protocol counted) for a request; a few regular expressions per miss, so the
        routes of requests that matched are remembered (at most ROUTES_KEPT; misses are not kept)."""
        key = (method, path)
        found = self._matched.get(key)
        if found is None:
            found = self._match(method, path)
            if len(self._matched) >= ROUTES_KEPT:
                self._matched.clear()
            self._matched[key] = found
        handler, params, counted = found
        return handler, dict(params), counted  # a copy: a handler may keep or change its own

    def _match(self, method: str, path: str) -> tuple[Handler, Params, str | None]:
        allowed: list[str] = []
        for pattern, methods, counted in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = methods.get("GET" if method == "HEAD" else method)
            if handler is not None:
                return handler, {k: v for k, v in match.groupdict().items() if v is not None}, counted
            allowed += methods
        if allowed:
            allow = ", ".join(sorted({*allowed, *(["HEAD"] if "GET" in allowed else [])}))
            raise _NoRoute(Response.error(405, f"Method Not Allowed: {method} {path}", [("Allow", allow)]))
        raise _NoRoute(Response.error(404, f"Not Found: {method} {path}"))

    # -- health and metadata -----------------------------------------------------------------------------------
    async def root(self, request: Request, params: Params) -> Response:
        return Response.json({"status": "alive"})

    async def live(self, request: Request, params: Params) -> Response:
        return Response.json({"live": self.dataplane.live()})

    async def ready(self, request: Request, params: Params) -> Response:
        is_ready = await self.dataplane.ready()
        return Response.json({"ready": is_ready}, 200 if is_ready else 503)

    async def server_metadata(self, request: Request, params: Params) -> Response:
        return Response.json(self.dataplane.server_metadata())

    async def model_list(self, request: Request, params: Params) -> Response:
        return Response.json({"models": self.dataplane.model_names()})

    async def v1_model_ready(self, request: Request, params: Params) -> Response:
        name = params["name"]
        if not await self.dataplane.model_ready(name):
            return Response.error(503, f"Model with name {name} is not ready.")
        return Response.json({"name": name, "ready": True})

    async def model_ready(self, request: Request, params: Params) -> Response:
        name = params["name"]
        if not await self.dataplane.model_ready(name, params.get("version")):
            return Response.error(503, f"Model with name {name} is not ready.")
        return Response.json({"name": name, "ready": True})

    async def model_metadata(self, request: Request, params: Params) -> Response:
        metadata = await self.dataplane.model_metadata(params["name"], params.get("version"))
        return Response.json(metadata.to_dict())

    # -- inference ---------------------------------------------------------------------------------------------
    async def v2_infer(self, request: Request, params: Params) -> Response:
        name, version = params["name"], params.get("version")
        self.dataplane.model(name, version)
        body = await self.read_body(request)
        infer_request = codec_rest.decode_request(body, request.headers.get(codec_rest.IHCL), name, version)
        context = RequestContext("v2", headers=request.headers)  # type: ignore[arg-type]
        response = await self.dataplane.infer(infer_request, context)
        payload, headers = codec_rest.encode_response(response, infer_request)
        return self.reply(request, payload, headers, context)

    async def v1_predict(self, request: Request, params: Params) -> Response:
        return await self._v1(request, params["name"], self.dataplane.predict_v1)

    async def v1_explain(self, request: Request, params: Params) -> Response:
        return await self._v1(request, params["name"], self.dataplane.explain_v1)

    async def _v1(self, request: Request, name: str, operation: Callable[..., Awaitable[Any]]) -> Response:
        self.dataplane.model(name)
        body = codec_rest.loads(await self.read_body(request))
        context = RequestContext("v1", headers=request.headers)  # type: ignore[arg-type]
        result = await operation(name, body, context)
        return self.reply(request, codec_rest.dumps(result), {"Content-Type": "application/json"}, context)

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"request body of {request.content_length} bytes is over the limit of {limit} bytes")
        if request.stream is None:
            body = request.body or b""
        else:  # chunked: counted as it arrives
            pieces, size = [], 0
            async for piece in request.stream.iter_any():
                size += len(piece)
                if size > limit:
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
                pieces.append(piece)
            body = b"".join(pieces)
        encoding = request.headers.get("Content-Encoding")
        return compression.decompress(body, encoding, limit) if encoding else body

    def reply(self, request: Request, payload: bytes, headers: dict[str, str], context: RequestContext) -> Response:
        if context.response_headers:
            headers.update(hook_headers(context.response_headers))
        if context.timings:
            headers["Server-Timing"] = server_timing(context.timings)
        request_id = request.headers.get("x-request-id")
        if request_id:
            headers["x-request-id"] = request_id
        if len(payload) >= self.config.compress_min_bytes:
            encoding = compression.choose(request.headers.get("Accept-Encoding"))
            if encoding:
                payload = compression.compress(payload, encoding)
                headers["Content-Encoding"] = encoding
                headers["Vary"] = "Accept-Encoding"
        return Response(200, headers.items(), payload)

    # -- repository --------------------------------------------------------------------------------------------
    async def repository_index(self, request: Request, params: Params) -> Response:
        options = codec_rest.loads(await self.read_body(request) or b"{}")
        rows = self.dataplane.repository.index()
        if isinstance(options, dict) and options.get("ready") is True:
            rows = [row for row in rows if row["state"] == "READY"]
        return Response.json(rows)

    async def repository_load(self, request: Request, params: Params) -> Response:
        await self.dataplane.load(params["name"])
        return Response.json({"name": params["name"], "load": True})

    async def repository_unload(self, request: Request, params: Params) -> Response:
        await self.dataplane.unload(params["name"])
        return Response.json({"name": params["name"], "unload": True})

    async def metrics(self, request: Request, params: Params) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(200, [("Content-Type", content_type)], encoder(self.dataplane.metrics.registry))


class _NoRoute(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Framing and hop-by-hop fields belong to the server; a hook's copy would corrupt the response.
_SERVER_FIELDS = HOP_BY_HOP | {"content-length"}
_WARNED: set[str] = set()


def hook_headers(headers: dict[str, str]) -> dict[str, str]:
    """The response headers a model's hooks set that may go on the wire: a field name that is not an HTTP token, a
    value with a line break or NUL (response splitting), or a framing field is left out, with a warning."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        text = str(value)
        if (_TOKEN.fullmatch(name) and name.lower() not in _SERVER_FIELDS
                and not any(c in text for c in "\r\n\0") and text.isascii()):
            kept[name] = text
        elif name not in _WARNED and len(_WARNED) < 256:  # once per name, not once per request
            _WARNED.add(name)
            log.warning("response header %r set by a model hook is not a valid HTTP field (or is the server's "
                        "own); left out", name)
    return kept


def server_timing(timings: dict[str, float]) -> str:
    return ", ".join([f"{name};dur={seconds * 1000:.3f}" for name, seconds in timings.items()])
