"""Draining: the queue-proxy's way out, so that no request that reached it is lost.

While draining, health probes answer 503 at once (so the kubelet and the activator stop sending), ordinary requests
are still proxied, and every one of them restarts the quiet timer. The drain is over once ``quiet_period`` seconds
pass with no new request; the caller then stops its listeners and waits for the requests still in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)


class Drainer:
    def __init__(self, quiet_period: float) -> None:
        self.quiet_period = quiet_period
        self.draining = False
        self._last_request = 0.0

    def __repr__(self) -> str:
        return f"<Drainer draining={self.draining} quiet_period={self.quiet_period}>"

    def touch(self) -> None:
        """A request arrived (probes excluded): the quiet period starts again."""
        self._last_request = time.monotonic()  # not loop.time(): get_running_loop() costs a syscall per request

    def start(self) -> None:
        if not self.draining:
            log.info("draining: probes now fail; waiting for %.1f s without requests", self.quiet_period)
            self.draining = True
            self.touch()

    def reset(self) -> None:
        if self.draining:
            log.info("drain called off: probes pass again")
        self.draining = False

    async def wait_quiet(self) -> None:
        """Return once ``quiet_period`` seconds have passed since the last request."""
        while (remaining := self._last_request + self.quiet_period - time.monotonic()) > 0:
            await asyncio.sleep(remaining)
