"""The dynamic batcher without sockets: a fake model that records what it was called with, gated by events, and a
fake clock whose timers fire only when the test advances it (no sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from common.errors import InferenceError, InvalidInput
from model_server.batcher import Batcher
from model_server.model import RequestContext
from model_server.model_config import BatchingConfig
from model_server.types import InferRequest, InferResponse, RequestedOutput, Tensor

pytestmark = pytest.mark.timeout(10)


class FakeTimers:
    """A clock and ``call_later`` whose callbacks run only when :meth:`advance` moves time past them."""

    def __init__(self) -> None:
        self.now = 100.0
        self._timers: list[FakeTimers.Handle] = []

    @dataclass(eq=False)
    class Handle:
        when: float
        callback: Callable[[], None]
        cancelled: bool = False

        def cancel(self) -> None:
            self.cancelled = True

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimers.Handle:
        handle = FakeTimers.Handle(self.now + delay, callback)
        self._timers.append(handle)
        return handle

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [h for h in self._timers if not h.cancelled and h.when <= self.now + 1e-12]
        self._timers = [h for h in self._timers if h not in due]
        for handle in due:
            handle.callback()
        await settle()


async def settle() -> None:
    """Let every ready task run (a few loop turns), without waiting on time."""
    for _ in range(10):
        await asyncio.sleep(0)


@dataclass
class FakeModel:
    """y = 10 * x + 1 for FP32 x; s_out = s for BYTES s. Records each call; ``gate`` holds calls while cleared."""

    calls: list[InferRequest] = field(default_factory=list)
    contexts: list[RequestContext] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    fail: Exception | None = None
    drop_row: bool = False

    def __post_init__(self) -> None:
        self.gate.set()

    async def __call__(self, request: InferRequest, context: RequestContext) -> InferResponse:
        self.calls.append(request)
        self.contexts.append(context)
        await self.gate.wait()
        context.response_headers["x-call"] = str(len(self.calls))
        if self.fail is not None:
            raise self.fail
        outputs = []
        for tensor in request.inputs:
            if tensor.name == "x":
                y = tensor.data * 10 + 1
                if self.drop_row:
                    y = y[:-1]
                outputs.append(Tensor("y", "FP32", y.shape, y))
            if tensor.name == "s":
                outputs.append(Tensor("s_out", "BYTES", tensor.shape, tensor.data.copy()))
        wanted = {o.name for o in request.outputs} if request.outputs else None
        outputs = [o for o in outputs if wanted is None or o.name in wanted]
        return InferResponse(request.model_name, outputs, id="")

    def rows(self) -> list[int]:
        return [call.inputs[0].shape[0] for call in self.calls]


def request(value: float, rows: int = 1, width: int = 2, **extra) -> InferRequest:
    x = np.full((rows, width), value, dtype=np.float32) + np.arange(rows, dtype=np.float32)[:, None]
    return InferRequest("m", [Tensor("x", "FP32", x.shape, x)], id=f"r{value}", **extra)


def batcher(model: FakeModel, timers: FakeTimers, *, rows: int = 8, delay_us: int = 0, preferred=(), **kw) -> Batcher:
    config = BatchingConfig(rows, delay_us, tuple(preferred))
    return Batcher("m", model, config, clock=timers.clock, call_later=timers.call_later, **kw)


def submit(b: Batcher, req: InferRequest) -> asyncio.Task[InferResponse]:
    return asyncio.ensure_future(b.submit(req, RequestContext("v2")))


def expect(req: InferRequest) -> np.ndarray:
    return req.inputs[0].data * 10 + 1


async def test_concurrent_requests_each_get_their_own_rows_in_order():
    model, timers = FakeModel(), FakeTimers()
    b = batcher(model, timers, rows=16)
    model.gate.clear()
    first = submit(b, request(0.0))  # runs alone at once (nothing else queued), and holds the only slot
    await settle()
    reqs = [request(float(i), rows=1 + i % 3) for i in range(1, 8)]  # 1..3 rows each, distinct values
    tasks = [submit(b, r) for r in reqs]
    await settle()
    assert model.rows() == [1] and b.queued == 7
    model.gate.set()
    results = await asyncio.gather(first, *tasks)
    assert model.rows() == [1, sum(r.inputs[0].shape[0] for r in reqs)]  # the 7 queued ran as one batch
    for req, res in zip(reqs, results[1:]):
        (y,) = res.outputs
        assert y.shape == (req.inputs[0].shape[0], 2)
        np.testing.assert_array_equal(y.data, expect(req))
        assert res.id == req.id


async def test_queue_delay_bounds_the_wait_of_the_oldest_request():
    model, timers = FakeModel(), FakeTimers()
    b = batcher(model, timers, rows=8, delay_us=500)
    a = submit(b, request(1.0))
    await settle()
    await timers.advance(0.000300)
    c = submit(b, request(2.0, rows=2))
    await settle()
    await timers.advance(0.000199)
    assert model.calls == []  # 499 us: the oldest has not waited its 500 us yet
    await timers.advance(0.000001)
    assert model.rows() == [3]  # at 500 us both go, as one batch
    (ra, rc) = await asyncio.gather(a, c)
    np.testing.assert_array_equal(rc.outputs[0].data, expect(request(2.0, rows=2)))


async def test_a_full_batch_goes_without_waiting_for_the_delay():
    model, timers = FakeModel(), FakeTimers()
    b = batcher(model, timers, rows=4, delay_us=10_000_000)
    tasks = [submit(b, request(float(i), rows=2)) for i in range(3)]
    await settle()
    assert model.rows() == [4]  # two requests fill it; the third waits for more (or its delay)
    assert b.queued == 1
    await timers.advance(10.0)
    assert model.rows() == [4, 2]
    await asyncio.gather(*tasks)


async def test_preferred_size_sends_at_once_and_cuts_at_the_largest_it_makes():
    model, timers = FakeModel(), FakeTimers()
    model.gate.clear()
    b = batcher(model, timers, rows=8, delay_us=10_000_000, preferred=(2, 4))
    hold = submit(b, request(9.0, rows=8))  # a full batch that holds the slot while the others queue
    await settle()
    tasks = [submit(b, request(float(i))) for i in range(5)]
    await settle()
    model.gate.set()
    await settle()
    assert model.rows() == [8, 4]  # 5 rows queued: cut at 4, the largest preferred size they make
    assert b.queued == 1
    await timers.advance(10.0)
    assert model.rows() == [8, 4, 1]
    await asyncio.gather(hold, *tasks)


async def test_a_request_over_the_maximum_runs_alone_in_its_turn():
    model, timers = FakeModel(), FakeTimers()
    model.gate.clear()
    b = batcher(model, timers, rows=4)
    hold = submit(b, request(0.0, rows=4))
    await settle()
    small1, big, small2 = submit(b, request(1.0)), submit(b, request(2.0, rows=6)), submit(b, request(3.0))
    await settle()
    model.gate.set()
    results = await asyncio.gather(hold, small1, big, small2)
    # the batch of the oldest (small1) takes small2 past the big one, which then runs alone
    assert model.rows() == [4, 2, 6]
    np.testing.assert_array_equal(results[2].outputs[0].data, expect(request(2.0, rows=6)))


async def test_a_failing_batch_fails_each_of_its_requests():
    model, timers = FakeModel(), FakeTimers()
    model.gate.clear()
    b = batcher(model, timers)
    hold = submit(b, request(0.0))
    await settle()
    tasks = [submit(b, request(float(i))) for i in range(1, 4)]
    await settle()
    model.fail = InvalidInput("model says no")
    model.gate.set()
    results = await asyncio.gather(hold, *tasks, return_exceptions=True)
    assert [type(r) for r in results] == [InvalidInput] * 4
    assert all(r.message == "model says no" for r in results)
    assert model.rows() == [1, 3]


async def test_wrong_row_count_from_the_model_fails_the_batch_with_an_inference_error():
    model, timers = FakeModel(), FakeTimers()
    model.gate.clear()
    b = batcher(model, timers)
    hold = submit(b, request(0.0))
    await settle()
    tasks = [submit(b, request(float(i))) for i in range(1, 3)]
    await settle()
    model.drop_row = True
    model.gate.set()
    results = await asyncio.gather(hold, *tasks, return_exceptions=True)
    assert isinstance(results[1], InferenceError) and isinstance(results[2], InferenceError)
    assert "returned 1 rows of output 'y' for a batch of 2 rows" in results[1].message


async def test_only_compatible_requests_share_a_batch():
    model, timers = FakeModel(), FakeTimers()
    model.gate.clear()
    b = batcher(model, timers, fixed_inputs=frozenset({"iterations"}))
    hold = submit(b, request(0.0))
    await settle()
    wide = submit(b, request(1.0, width=3))  # other trailing dimension
    narrow1, narrow2 = submit(b, request(2.0)), submit(b, request(3.0))
    param = submit(b, request(4.0, parameters={"temperature": 2}))  # other parameters
    codec = submit(b, request(5.0, parameters={"binary_data_output": True}))  # codec-only: may join
    fixed = InferRequest("m", [*request(6.0).inputs, Tensor("iterations", "INT64", (1,), np.array([3]))])
    alone = submit(b, fixed)  # an input with no batch dimension
    await settle()
    model.gate.set()
    await asyncio.gather(hold, wide, narrow1, narrow2, param, codec, alone)
    widths = [(c.inputs[0].shape, tuple(c.parameters.items())) for c in model.calls]
    assert widths == [
        ((1, 2), ()), ((1, 3), ()), ((3, 2), ()), ((1, 2), (("temperature", 2),)), ((1, 2), ()),
    ]


async def test_bytes_and_requested_outputs_survive_batching():
    model, timers = FakeModel(), FakeTimers()
    model.gate.clear()
    b = batcher(model, timers)
    hold = submit(b, request(0.0))
    await settle()

    def with_text(value: float, words: list[bytes], outputs: list[str] | None) -> InferRequest:
        req = request(value, rows=len(words))
        s = np.array(words, dtype=np.object_).reshape(-1, 1)
        req.inputs.append(Tensor("s", "BYTES", s.shape, s))
        req.outputs = None if outputs is None else [RequestedOutput(n) for n in outputs]
        return req

    a = with_text(1.0, [b"alpha", b""], ["s_out"])
    c = with_text(2.0, [b"\xff\x00binary"], ["y"])
    tasks = [submit(b, a), submit(b, c)]
    await settle()
    model.gate.set()
    _, ra, rc = await asyncio.gather(hold, *tasks)
    assert [o.name for o in model.calls[1].outputs] == ["s_out", "y"]  # the union of what they asked for
    assert ra.output("s_out").data.reshape(-1).tolist() == [b"alpha", b""]
    assert rc.output("s_out").data.reshape(-1).tolist() == [b"\xff\x00binary"]
    np.testing.assert_array_equal(rc.output("y").data, expect(c))


async def test_a_cancelled_request_is_left_out_of_the_batch():
    model, timers = FakeModel(), FakeTimers()
    model.gate.clear()
    b = batcher(model, timers)
    hold = submit(b, request(0.0))
    await settle()
    gone, kept = submit(b, request(1.0, rows=2)), submit(b, request(2.0))
    await settle()
    gone.cancel()
    await settle()
    model.gate.set()
    result = await kept
    await hold
    assert model.rows() == [1, 1]
    np.testing.assert_array_equal(result.outputs[0].data, expect(request(2.0)))


async def test_slots_bound_the_batches_in_flight():
    model, timers = FakeModel(), FakeTimers()
    model.gate.clear()
    b = batcher(model, timers, slots=2)
    tasks = [submit(b, request(float(i))) for i in range(5)]
    await settle()
    assert model.rows() == [1, 1]  # two run at once; the other three wait for a slot
    assert "queued=3 free=0/2" in repr(b)
    model.gate.set()
    await asyncio.gather(*tasks)
    assert model.rows() == [1, 1, 3]


async def test_metrics_hook_sees_rows_and_each_wait():
    model, timers = FakeModel(), FakeTimers()
    seen: list[tuple[int, list[float]]] = []
    b = batcher(model, timers, delay_us=1000, on_batch=lambda rows, waits: seen.append((rows, waits)))
    a = submit(b, request(1.0, rows=2))
    await settle()
    await timers.advance(0.0004)
    c = submit(b, request(2.0))
    await settle()
    await timers.advance(0.0006)
    await asyncio.gather(a, c)
    assert seen == [(3, [pytest.approx(0.001), pytest.approx(0.0006)])]


def submit_as(b: Batcher, req: InferRequest, headers: dict[str, str]) -> tuple[asyncio.Task, RequestContext]:
    context = RequestContext("v2", headers=headers)
    return asyncio.ensure_future(b.submit(req, context)), context


async def test_key_headers_keep_credentials_apart_and_the_batch_call_sees_the_first_requests_headers():
    model, timers = FakeModel(), FakeTimers()
    model.gate.clear()
    b = batcher(model, timers, key_headers=("authorization",))
    hold = submit(b, request(0.0))
    await settle()
    alice1, c1 = submit_as(b, request(1.0), {"authorization": "alice", "traceparent": "t-1"})
    bob, c2 = submit_as(b, request(2.0), {"authorization": "bob"})
    alice2, c3 = submit_as(b, request(3.0), {"authorization": "alice", "traceparent": "t-3"})
    await settle()
    model.gate.set()
    await asyncio.gather(hold, alice1, bob, alice2)
    assert model.rows() == [1, 2, 1]  # alice's two requests together; bob's alone
    assert model.contexts[1].headers == {"authorization": "alice", "traceparent": "t-1"}
    assert model.contexts[2].headers == {"authorization": "bob"}
    # what the batch's call set comes back on each of its responses
    assert [c.response_headers for c in (c1, c3, c2)] == [{"x-call": "2"}, {"x-call": "2"}, {"x-call": "3"}]


async def test_without_key_headers_any_credentials_share_a_batch():
    model, timers = FakeModel(), FakeTimers()
    model.gate.clear()
    b = batcher(model, timers)
    hold = submit(b, request(0.0))
    await settle()
    tasks = [submit_as(b, request(float(i)), {"authorization": f"user-{i}"})[0] for i in range(1, 4)]
    await settle()
    model.gate.set()
    await asyncio.gather(hold, *tasks)
    assert model.rows() == [1, 3]


async def test_the_next_batch_starts_before_the_finished_batchs_callers_wake():
    model, timers = FakeModel(), FakeTimers()
    model.gate.clear()
    b = batcher(model, timers)
    calls_when_woken: list[int] = []

    async def caller(value: float) -> None:
        await b.submit(request(value), RequestContext("v2"))
        calls_when_woken.append(len(model.calls))

    first = asyncio.ensure_future(caller(0.0))
    await settle()
    queued = asyncio.ensure_future(caller(1.0))
    await settle()
    assert model.rows() == [1]
    model.gate.set()
    await asyncio.gather(first, queued)
    assert calls_when_woken[0] == 2  # the queued request's batch had reached the model when the first woke
