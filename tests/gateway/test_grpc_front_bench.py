"""bench.grpc_front runs the gateway's gRPC front between real gRPC processes; this keeps the tool working as the
front changes (it raises when a call fails; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys

from tests.harness import ROOT


def test_the_grpc_front_bench_calls_through_the_real_front():
    done = subprocess.run(
        [sys.executable, "-m", "bench.grpc_front", "--calls", "20", "--rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "median of 1 rounds of 20 calls" in done.stdout
