"""bench.ab_gateway end to end, one short round: it checks out a revision, starts the stack and both gateways, and
drives each with wrk. No timing is asserted; this keeps the tool working as the gateway and the stack change."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="bench.ab_gateway drives the gateways with wrk")


def test_ab_gateway_compares_a_revision_with_the_working_tree():
    done = subprocess.run(
        [sys.executable, "-m", "bench.ab_gateway", "HEAD", "--rounds", "1", "--seconds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "round  1  base" in done.stdout and "paired median difference" in done.stdout
    listed = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "ab-gateway-" not in listed  # its worktree is gone again
