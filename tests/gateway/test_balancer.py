"""Least-outstanding backend choice without sockets: the least busy ready replica, random ties, releases, gRPC
ports, 503 with no ready replica, and counts that survive a routing-state change."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from common.errors import Unavailable
from gateway.balancer import LeastOutstanding
from gateway.state import Endpoint, Revision


def revision(*endpoints: Endpoint, name: str = "r-00001") -> Revision:
    return Revision(name, "default", "r", "predictor", endpoints)


A, B, C = Endpoint("10.0.0.1:8012", "10.0.0.1:8013"), Endpoint("10.0.0.2:8012"), Endpoint("10.0.0.3:8012")


def test_picks_the_endpoint_with_fewest_outstanding_requests() -> None:
    balancer = LeastOutstanding(random.Random(3))
    rev = revision(A, B, C)
    held = [balancer.acquire(rev) for _ in range(3)]
    assert sorted(lease.address for lease in held) == [A.http, B.http, C.http]  # one each before any gets two
    held[1].release()
    assert balancer.acquire(rev).address == held[1].address  # the one that became free
    assert {balancer.outstanding("r-00001", e.http) for e in (A, B, C)} == {1}


def test_ties_are_broken_at_random() -> None:
    balancer = LeastOutstanding(random.Random(5))
    rev = revision(A, B, C)
    picks = Counter()
    for _ in range(3000):
        with balancer.acquire(rev) as lease:
            picks[lease.address] += 1
    assert set(picks) == {A.http, B.http, C.http}
    assert all(800 < n < 1200 for n in picks.values())


def test_not_ready_endpoints_are_skipped_and_none_ready_is_503() -> None:
    balancer = LeastOutstanding()
    assert {balancer.acquire(revision(A, Endpoint("10.0.0.9:1", ready=False))).address for _ in range(20)} == {A.http}
    with pytest.raises(Unavailable) as raised:
        balancer.acquire(revision(Endpoint("10.0.0.9:1", ready=False), name="r-00007"))
    assert raised.value.message == "no ready replica for revision r-00007"
    with pytest.raises(Unavailable):
        balancer.acquire(revision(name="r-00008"))  # no endpoints at all


def test_grpc_leases_use_endpoints_with_a_grpc_port() -> None:
    balancer = LeastOutstanding()
    assert {balancer.acquire(revision(A, B), "grpc").address for _ in range(10)} == {A.grpc}
    with pytest.raises(Unavailable) as raised:
        balancer.acquire(revision(B, C), "grpc")
    assert raised.value.message == "no ready replica with a gRPC port for revision r-00001"


def test_release_is_idempotent_and_in_flight_counts_by_revision() -> None:
    balancer = LeastOutstanding()
    lease = balancer.acquire(revision(A))
    other = balancer.acquire(revision(B, name="r-00002"))
    assert balancer.in_flight() == {"r-00001": 1, "r-00002": 1}
    lease.release()
    lease.release()
    assert balancer.in_flight() == {"r-00002": 1}
    assert repr(lease) == "<Lease r-00001 10.0.0.1:8012 released>"
    other.release()
    assert balancer.in_flight() == {}


def test_counts_survive_a_state_change_and_gone_endpoints_are_forgotten_when_idle() -> None:
    balancer = LeastOutstanding()
    old = revision(A, B)
    held = balancer.acquire(old)
    balancer.retain({"r-00001": revision(A if held.address == B.http else B)})  # the held endpoint left the state
    assert balancer.outstanding("r-00001", held.address) == 1  # still counted while its request runs
    held.release()
    assert balancer.outstanding("r-00001", held.address) == 0
    assert ("r-00001", held.address) not in balancer._outstanding
    assert repr(balancer) == "<LeastOutstanding outstanding={}>"
