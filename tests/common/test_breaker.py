"""The breaker without sockets: limits, the queue bound, FIFO grants, cancellation, capacity changes."""

from __future__ import annotations

import asyncio

import pytest

from common.breaker import Breaker, QueueFull


async def test_capacity_queue_and_overflow():
    breaker = Breaker(2)
    assert breaker.queue_depth == 20
    running = []
    gate = asyncio.Event()

    async def request(i: int) -> str:
        async with breaker:
            running.append(i)
            await gate.wait()
        return "ok"

    tasks = [asyncio.create_task(request(i)) for i in range(22)]
    await asyncio.sleep(0)
    assert breaker.running == 2 and breaker.waiting == 20 and breaker.in_flight == 22
    with pytest.raises(QueueFull, match="pending request queue full"):
        await breaker.acquire()
    gate.set()
    assert await asyncio.gather(*tasks) == ["ok"] * 22
    assert running == list(range(22))  # granted in arrival order
    assert breaker.in_flight == 0 and breaker.running == 0


async def test_unlimited_never_waits_or_refuses():
    breaker = Breaker(0)
    for _ in range(1000):
        await breaker.acquire()
    assert breaker.running == 1000 and breaker.waiting == 0
    for _ in range(1000):
        breaker.release()
    assert breaker.in_flight == 0


async def test_cancelled_waiter_leaves_no_trace():
    breaker = Breaker(1)
    await breaker.acquire()
    waiter = asyncio.create_task(breaker.acquire())
    await asyncio.sleep(0)
    assert breaker.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert breaker.in_flight == 1 and breaker.waiting == 0
    breaker.release()
    assert breaker.try_acquire()


async def test_cancelled_after_grant_passes_the_slot_on():
    breaker = Breaker(1)
    await breaker.acquire()
    first = asyncio.create_task(breaker.acquire())
    second = asyncio.create_task(breaker.acquire())
    await asyncio.sleep(0)
    breaker.release()  # grants first's future...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)  # the slot went on to second
    assert breaker.running == 1 and breaker.in_flight == 1


async def test_capacity_changes_at_run_time():
    breaker = Breaker(1, queue_depth=10)
    await breaker.acquire()
    waiters = [asyncio.create_task(breaker.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    breaker.update_capacity(3)
    await asyncio.sleep(0)
    assert breaker.running == 3 and breaker.waiting == 1
    breaker.update_capacity(1)  # shrinking waits for running requests to finish
    breaker.release()
    breaker.release()
    await asyncio.sleep(0)
    assert breaker.running == 1 and breaker.waiting == 1
    breaker.release()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert breaker.running == 1
    assert "running=1/1" in repr(breaker)


async def test_waiter_cancelled_and_skipped_by_a_grant_before_it_runs():
    breaker = Breaker(1)
    await breaker.acquire()
    waiter = asyncio.create_task(breaker.acquire())
    await asyncio.sleep(0)
    waiter.cancel()  # its future is cancelled now; its except block has not run yet...
    breaker.release()  # ...and the grant pops the cancelled future and skips it
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert breaker.in_flight == 0 and breaker.running == 0
    assert breaker.try_acquire()


def test_try_acquire_respects_waiters_and_capacity():
    breaker = Breaker(1)
    assert breaker.try_acquire()
    assert not breaker.try_acquire()
    breaker.release()
    assert breaker.try_acquire()
