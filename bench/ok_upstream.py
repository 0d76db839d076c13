"""``python -m bench.ok_upstream PORT``: the queue-proxy suite's fallback upstream, used only when nginx is absent.

Every method on every path reads the body and answers 200 ``ok``, on uvloop, without access logs. It is Python, so
it is slower than the proxies it sits behind; the suite says so in its output when it has to use it.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from common.lifecycle import run_service, start_http

HOST = "127.0.0.1"
REPLY = b"ok"


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=REPLY, content_type="text/plain")


def main(argv: list[str]) -> int:
    port = int(argv[0])

    async def serve(stop: asyncio.Event) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", ok)
        runner = await start_http(app, HOST, port, shutdown_timeout=1.0, access_log=None)
        await stop.wait()
        await runner.cleanup()

    return run_service(serve)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
