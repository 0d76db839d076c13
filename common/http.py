"""HTTP answers every servelane service gives the same way: JSON error bodies, ``{"error": "<message>"}``.

tritonclient and KServe clients read the ``error`` field of any non-2xx body, so every hop (model server,
queue-proxy, gateway, activator) answers its own failures in this one shape.
"""

from __future__ import annotations

import orjson
from aiohttp import web


def error_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}), content_type="application/json")


def json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type="application/json")
