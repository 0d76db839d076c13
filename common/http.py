"""HTTP answers every servelane service gives the same way: JSON error bodies, ``{"error": "<message>"}``.

tritonclient and KServe clients read the ``error`` field of any non-2xx body, so every hop (model server,
queue-proxy, gateway, activator) answers its own failures in this one shape.
"""

from __future__ import annotations

import grpc
import orjson
from aiohttp import web

# The HTTP status a gRPC status stands for, to count gRPC calls beside HTTP requests in the same metrics.
_GRPC_TO_HTTP = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def error_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}), content_type="application/json")


def json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type="application/json")


def http_status_of(code: grpc.StatusCode) -> int:
    return _GRPC_TO_HTTP.get(code, 500)
