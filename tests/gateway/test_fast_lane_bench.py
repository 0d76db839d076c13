"""bench.fast_lane drives the gateway's real fast lane with fake transports; it raises when the lane does not relay
the request, so this keeps the tool working as the lane changes (no timing is asserted)."""

from __future__ import annotations

from bench.fast_lane import measure


def test_the_fast_lane_bench_relays_through_the_real_lane():
    (per_request,) = measure(requests=20, rounds=1)
    assert per_request > 0
