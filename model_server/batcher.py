"""Dynamic batching: V2 requests to one model queue up, run together along the first dimension, and split back.

    submit(request) ──▶ queue of _Item(request, rows, key, future, queued_at), oldest first
                          │ _schedule(): while a run slot is free (``slots`` batches run at once, the model's
                          │ ``instances``) and the oldest request's batch is due, take it; else arm one timer
                          ▼ for the moment it will be due
    _run(batch): merge (concatenate every input along dimension 0) → predict once → split each output by rows

A batch is due when it is full (it holds max_batch_rows, or the next request that could join would push it
over), when its rows make one of the preferred sizes (it is then cut at the largest it makes), once its oldest
request has waited max_queue_delay, or at once when that delay is 0: then batches form only from what queued
while every slot was busy, which costs a lone request nothing. Only requests with the same input names,
datatypes, trailing dimensions and parameters (and the same values of the model's ``key_headers``, so that
credentials never mix) share a batch; a request larger than max_batch_rows, with no common first dimension, or
with an input whose first dimension is not a batch dimension, runs alone. The model call of a batch gets the
first request's headers; the response headers it sets go to every request of the batch.

Requests are validated before they get here, so one bad input never fails the others. A batch whose model call
fails fails each of its requests with that error; a model that returns the wrong number of rows fails them with
an InferenceError. Every request gets exactly its own rows, in order; filtering the requested outputs is left to
the dataplane (the batch computes the union of what its requests asked for). When a batch's model call returns,
the next due batch starts before the finished batch's callers are woken, so the model does not wait while their
responses are encoded. The clock and the timer are injected, so tests drive the delay without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

import numpy as np

from common.errors import InferenceError
from model_server.model import RequestContext
from model_server.model_config import BatchingConfig
from model_server.types import InferRequest, InferResponse, RequestedOutput, Tensor

# Request parameters that only say how the response is encoded; requests differing in them still share a batch.
CODEC_PARAMETERS = frozenset({"binary_data_output"})

RunBatch = Callable[[InferRequest, RequestContext], Awaitable[Any]]
OnBatch = Callable[[int, list[float]], None]  # (rows in the batch, each request's seconds in the queue)


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], TimerHandle]


@dataclass(slots=True, eq=False)
class _Item:
    request: InferRequest
    context: RequestContext
    rows: int
    key: Hashable | None  # None: runs alone
    queued_at: float
    future: asyncio.Future[InferResponse] = field(repr=False)


class Batcher:
    def __init__(
        self,
        name: str,
        run: RunBatch,
        config: BatchingConfig,
        *,
        slots: int = 1,
        fixed_inputs: frozenset[str] = frozenset(),
        key_headers: tuple[str, ...] = (),
        on_batch: OnBatch | None = None,
        clock: Callable[[], float] = time.monotonic,
        call_later: CallLater | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._run_batch = run
        self._delay = config.max_queue_delay_us / 1e6
        self._preferred = frozenset(config.preferred_batch_rows)
        self._free = self._slots = max(1, slots)
        self._fixed = fixed_inputs
        self._key_headers = key_headers
        self._on_batch = on_batch
        self._clock = clock
        self._call_later = call_later
        self._queue: deque[_Item] = deque()
        self._timer: TimerHandle | None = None
        self._timer_deadline = 0.0
        self._fired = float("-inf")  # the deadline of the last timer that fired: batches due by then are due
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        c = self.config
        return (f"<Batcher {self.name} queued={len(self._queue)} free={self._free}/{self._slots} "
                f"max_rows={c.max_batch_rows} delay={c.max_queue_delay_us}us preferred={list(c.preferred_batch_rows)}>")

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, request: InferRequest, context: RequestContext) -> InferResponse:
        rows, key = self._shape(request, context)
        future: asyncio.Future[InferResponse] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(request, context, rows, key, self._clock(), future))
        self._schedule()
        return await future  # cancelled (the client left): the item is skipped when batches form

    def _shape(self, request: InferRequest, context: RequestContext) -> tuple[int, Hashable | None]:
        """The request's rows, and the key of the requests it may share a batch with (None: it runs alone)."""
        inputs = request.inputs
        rows = inputs[0].shape[0] if inputs and inputs[0].shape else 0
        if rows < 1 or rows > self.config.max_batch_rows:
            return rows, None
        for tensor in inputs:
            if not tensor.shape or tensor.shape[0] != rows or tensor.name in self._fixed:
                return rows, None
        signature = tuple(sorted((t.name, t.datatype, t.shape[1:]) for t in inputs))
        parameters = tuple(sorted((k, v) for k, v in request.parameters.items() if k not in CODEC_PARAMETERS))
        if not self._key_headers:
            return rows, (signature, parameters)
        headers = context.headers
        return rows, (signature, parameters, tuple(headers.get(name) for name in self._key_headers))

    # -- scheduling ------------------------------------------------------------------------------------------------
    def _schedule(self) -> None:
        while self._free > 0 and self._queue:
            batch, deadline = self._take()
            if batch is None:
                if self._queue:
                    self._arm(deadline)
                return
            self._free -= 1
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> tuple[list[_Item] | None, float]:
        """The due batch of the oldest request, removed from the queue; or None and when it will be due."""
        queue = self._queue
        while queue and queue[0].future.done():  # its caller gave up
            queue.popleft()
        if not queue:
            return None, 0.0
        head = queue[0]
        limit = self.config.max_batch_rows
        if head.key is None or head.rows >= limit:
            return [queue.popleft()], 0.0
        chosen, rows, cut, full = [head], head.rows, 0, False
        if rows in self._preferred:
            cut = 1
        for item in islice(queue, 1, None):
            if item.key != head.key or item.future.done():
                continue
            if rows + item.rows > limit:
                full = True
                break
            chosen.append(item)
            rows += item.rows
            if rows in self._preferred:
                cut = len(chosen)
            if rows == limit:
                full = True
                break
        deadline = head.queued_at + self._delay
        if not (full or self._delay == 0 or deadline <= max(self._clock(), self._fired)):
            if not cut:
                return None, deadline
            chosen = chosen[:cut]
        self._remove(chosen)
        return chosen, 0.0

    def _remove(self, chosen: list[_Item]) -> None:
        queue = self._queue
        if all(queue[i] is item for i, item in enumerate(chosen)):  # the usual case: a prefix of the queue
            for _ in chosen:
                queue.popleft()
            return
        taken = {id(item) for item in chosen}
        self._queue = deque(item for item in queue if id(item) not in taken)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            if self._timer_deadline == deadline:
                return
            self._timer.cancel()
        call_later = self._call_later or asyncio.get_running_loop().call_later
        self._timer_deadline = deadline
        self._timer = call_later(max(0.0, deadline - self._clock()), lambda: self._on_timer(deadline))

    def _on_timer(self, deadline: float) -> None:
        self._timer = None
        self._fired = max(self._fired, deadline)  # libuv timers are whole milliseconds and may fire early
        self._schedule()

    # -- running ---------------------------------------------------------------------------------------------------
    async def _run(self, batch: list[_Item]) -> None:
        started = self._clock()
        rows = sum(item.rows for item in batch)
        released = False
        try:
            waits = [started - item.queued_at for item in batch]
            for item, wait in zip(batch, waits):
                item.context.timings["batch_queue"] = wait  # shows in the response's Server-Timing
            if self._on_batch is not None:
                self._on_batch(rows, waits)
            if len(batch) == 1:
                item = batch[0]
                result = await self._run_batch(item.request, item.context)
                released = True
                self._release()
                _settle(item, result)
            else:
                first = batch[0].context
                context = RequestContext(first.protocol, headers=first.headers)
                result = await self._run_batch(merge([item.request for item in batch]), context)
                released = True
                self._release()
                for item, part in zip(batch, split(self.name, result, batch, rows)):
                    item.context.response_headers.update(context.response_headers)
                    _settle(item, part)
        except asyncio.CancelledError:
            for item in batch:
                item.future.cancel()
            raise
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        finally:
            if not released:
                self._release()

    def _release(self) -> None:
        """Free this batch's slot and start the next due batch. Called as soon as the model returns, before the
        callers are woken: the next batch's first step is then queued on the loop ahead of their responses."""
        self._free += 1
        self._schedule()


def _settle(item: _Item, result: Any) -> None:
    if not item.future.done():
        item.future.set_result(result)


def merge(requests: list[InferRequest]) -> InferRequest:
    """One request holding every request's rows, in order; outputs: the union of those asked for (None: all)."""
    first = requests[0]
    inputs = []
    for tensor in first.inputs:
        parts = [tensor.data]
        for other in requests[1:]:
            match = other.input(tensor.name)
            assert match is not None  # same batch key: same input names
            parts.append(match.data)
        data = np.concatenate(parts, axis=0)
        inputs.append(Tensor(tensor.name, tensor.datatype, tuple(data.shape), data, dict(tensor.parameters)))
    outputs: list[RequestedOutput] | None = []
    seen: set[str] = set()
    for request in requests:
        if request.outputs is None:
            outputs = None
            break
        for out in request.outputs:
            if out.name not in seen:
                seen.add(out.name)
                outputs.append(RequestedOutput(out.name))
    parameters = {k: v for k, v in first.parameters.items() if k not in CODEC_PARAMETERS}
    return InferRequest(first.model_name, inputs, None, first.model_version, parameters, outputs)


def split(name: str, result: Any, batch: list[_Item], rows: int) -> list[InferResponse]:
    """Each request's own rows of every output; the model must return one row per input row."""
    if not isinstance(result, InferResponse):
        raise InferenceError(f"model {name} returned {type(result).__name__}, not an InferResponse")
    for tensor in result.outputs:
        if not tensor.shape or tensor.shape[0] != rows or len(tensor.data) != rows:
            got = tensor.shape[0] if tensor.shape else "no"
            raise InferenceError(
                f"model {name} returned {got} rows of output '{tensor.name}' for a batch of {rows} rows"
            )
    parts, start = [], 0
    for item in batch:
        stop = start + item.rows
        outputs = [
            Tensor(t.name, t.datatype, (item.rows, *t.shape[1:]), t.data[start:stop], dict(t.parameters))
            for t in result.outputs
        ]
        parts.append(InferResponse(result.model_name, outputs, item.request.id or "", result.model_version,
                                   dict(result.parameters)))
        start = stop
    return parts
