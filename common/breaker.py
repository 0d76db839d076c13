"""The concurrency limit in front of an upstream: at most ``capacity`` requests run, a bounded queue waits.

Knative's queue-proxy breaker, in asyncio: admission is refused at once (:class:`QueueFull`, a 503) when
``capacity + queue_depth`` requests are already in (waiting or running); otherwise a request waits for a free
slot in arrival order. ``capacity`` 0 means unlimited: nothing waits, nothing is refused. Capacity can change at
run time; a shrink takes effect as running requests finish. Waiters are plain futures in a deque: a waiter only
awaits its own future, and every grant happens in :meth:`_grant`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType

from common.errors import Unavailable

QUEUE_FACTOR = 10  # Knative: queue depth is 10x containerConcurrency, so the autoscaler has time to react


class QueueFull(Unavailable):
    def __init__(self) -> None:
        super().__init__("pending request queue full")


class Breaker:
    def __init__(self, capacity: int, queue_depth: int | None = None) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0 (0 means unlimited)")
        self._capacity = capacity
        self.queue_depth = QUEUE_FACTOR * capacity if queue_depth is None else queue_depth
        if self.queue_depth < 0:
            raise ValueError("queue_depth must be >= 0")
        self._in = 0  # admitted: waiting plus running
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        limit = self._capacity or "unlimited"
        return f"<Breaker running={self._running}/{limit} waiting={len(self._waiters)} queue_depth={self.queue_depth}>"

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released: those waiting for a slot and those running."""
        return self._in

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._in - self._running

    def update_capacity(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0 (0 means unlimited)")
        self._capacity = capacity
        self._grant()

    async def acquire(self) -> None:
        """Wait for a slot; :class:`QueueFull` at once when the queue is full. Cancellation leaves no trace."""
        if self._capacity and self._in >= self._capacity + self.queue_depth:
            raise QueueFull()
        self._in += 1
        if not self._waiters and (not self._capacity or self._running < self._capacity):
            self._running += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # granted a slot just as it was cancelled: give it back
                self._running -= 1
                self._grant()
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:  # _grant already dropped it, seeing it cancelled
                    pass
            self._in -= 1
            raise

    def try_acquire(self) -> bool:
        """Take a free slot without waiting, or return False."""
        if self._waiters or (self._capacity and self._running >= self._capacity):
            return False
        self._in += 1
        self._running += 1
        return True

    def release(self) -> None:
        self._in -= 1
        self._running -= 1
        self._grant()

    def _grant(self) -> None:
        while self._waiters and (not self._capacity or self._running < self._capacity):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._running += 1
                waiter.set_result(None)

    async def __aenter__(self) -> Breaker:
        await self.acquire()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
