"""Process lifecycle shared by every service: the event loop, signals, and the ordered shutdown of HTTP sites.

A service's ``__main__`` calls :func:`run_service` with a coroutine function that starts its servers, waits on
the stop event, and shuts down in order. Signal handlers only set that event; they never do shutdown work.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import uvloop

if TYPE_CHECKING:
    from aiohttp import web  # imported where used: a queue-proxy never loads aiohttp (~16 MB of RSS)

log = logging.getLogger(__name__)

# A request allocates a few hundred objects, nearly all freed by reference counting before the next one. With
# the default first threshold (700) the cyclic collector ran about every other request and found nothing; at
# 10,000 it runs a fifteenth as often, and each run still only visits the young objects that are alive.
GC_THRESHOLDS = (10_000, 10, 10)


def run_service(serve: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run ``serve(stop)`` on uvloop until it returns; SIGTERM and SIGINT set ``stop``. Returns the exit code.

    ``serve`` calls :func:`settled` once it is serving."""
    gc.set_threshold(*GC_THRESHOLDS)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, sig, stop)
        await serve(stop)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    return 0


def settled() -> None:
    """A service is up: collect once, then freeze what start-up made (modules, models, routing state) so that no
    later full collection walks it again; those walks are the pauses a long-lived server would see in its p99."""
    gc.collect()
    gc.freeze()


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    if stop.is_set():
        log.warning("received %s again while shutting down; still draining", sig.name)
        return
    log.info("received %s: draining", sig.name)
    stop.set()


async def start_http(
    app: web.Application, host: str, port: int, *, shutdown_timeout: float, **runner_kwargs: object
) -> web.AppRunner:
    """Start ``app`` on host:port (port 0 picks a free one); ``shutdown_timeout`` bounds the drain of handlers."""
    from aiohttp import web
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, **runner_kwargs)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the runner's first site listens on (useful when it was started on port 0)."""
    for addr in runner.addresses:
        return int(addr[1])
    raise RuntimeError("runner has no listening site")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago. Only for wiring processes together; servers bind port 0 themselves."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
