"""``python -m bench.ab_gateway BASE [--rounds 12] [--seconds 3] [--concurrency 1]``: two gateways, side by side.

The gateway of ``BASE`` (a git revision, checked out in a temporary worktree) and the working tree's, on one
``servelane up examples/`` stack: both follow its controller and relay to the same predictor replica. wrk drives
each in turn, ``-c{concurrency}`` for ``--seconds``, with the stack suite's ``gateway-predictor`` request; the order
alternates every round. Each run's line is CPU per request (utime + stime of that gateway over the run), rps and
p50; then the medians, and the median of the per-round differences (working tree minus base).

What it is for: the stack suite's gateway CPU at c1 moves by a fifth from run to run on a shared 2-core VM, so a
change worth a few percent cannot be seen by running the suite before and after. Here both versions meet the
same neighbours within seconds of each other, and the paired difference shows what the change is worth at c1,
where ``bench.fast_lane`` shows it with warm caches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.harness import process_cpu_seconds
from bench.loadgen import find_wrk, wrk_load
from bench.stack import READY_TIMEOUT, STOP_TIMEOUT, by_predictor_host, command_lines, flag, second_gateway
from tests.harness import ROOT, ServiceProcess, free_port


@contextlib.contextmanager
def worktree(base: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ab-gateway-") as tmp:
        path = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(path), base], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)


@contextlib.contextmanager
def stack(logs: Path) -> Iterator[str | None]:
    """``servelane up examples/``, ready; its controller's URL (None without one: second_gateway says so)."""
    up = ServiceProcess.servelane_up(
        ROOT / "examples", port=free_port(), grpc_port=free_port(), admin_port=free_port(), log_dir=logs
    ).start()
    try:
        up.wait_output("servelane: ready in", READY_TIMEOUT)
        gateway = next(a for a in command_lines(up.pid).values() if flag(a, "-m") == "gateway")
        yield flag(gateway, "--controller")
    finally:
        up.stop(STOP_TIMEOUT)


async def one_run(wrk: str, pid: int, port: int, concurrency: int, seconds: float) -> tuple[float, float, float]:
    """(CPU µs per request, rps, p50 ms) of one wrk run against the gateway ``pid`` listening on ``port``."""
    request = by_predictor_host(port)
    before = process_cpu_seconds(pid)
    load = await wrk_load(wrk, request, concurrency, seconds)
    cpu = process_cpu_seconds(pid) - before
    if load.errors or not load.requests:
        raise RuntimeError(f"the run against port {port} failed: {load.errors} errors; {load.error_sample}")
    return cpu / load.requests * 1e6, load.requests / load.elapsed_s, load.p50_ms


async def compare(wrk: str, base: tuple[int, int], head: tuple[int, int], args: argparse.Namespace) -> int:
    await one_run(wrk, *base, args.concurrency, 1)  # warm both up
    await one_run(wrk, *head, args.concurrency, 1)
    rows: list[tuple[float, float]] = []
    for n in range(args.rounds):
        order = (base, head) if n % 2 == 0 else (head, base)
        results = {gw: await one_run(wrk, *gw, args.concurrency, args.seconds) for gw in order}
        (a, a_rps, a_p50), (b, b_rps, b_p50) = results[base], results[head]
        rows.append((a, b))
        print(f"round {n + 1:2d}  base {a:6.1f} us {a_rps:6.0f} rps p50 {a_p50:.3f} ms   "
              f"tree {b:6.1f} us {b_rps:6.0f} rps p50 {b_p50:.3f} ms", flush=True)  # fmt: skip
    a_med, b_med = statistics.median(a for a, _ in rows), statistics.median(b for _, b in rows)
    diff = statistics.median(b - a for a, b in rows)
    print(f"CPU per request at c{args.concurrency}, medians of {args.rounds} rounds: base {a_med:.1f} us, "
          f"working tree {b_med:.1f} us ({b_med / a_med:.3f}x); paired median difference {diff:+.1f} us")  # fmt: skip
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab_gateway", description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="the git revision to compare the working tree with (HEAD, a commit, a branch)")
    p.add_argument("--rounds", type=int, default=12, help="rounds; each runs both gateways once (default 12)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per wrk run (default 3)")
    p.add_argument("--concurrency", type=int, default=1, help="wrk connections (default 1)")
    args = p.parse_args(argv)
    wrk = find_wrk(install=False)
    if wrk is None:
        print("bench.ab_gateway needs wrk (apt install wrk)", file=sys.stderr)
        return 2
    with (
        worktree(args.base) as source,
        tempfile.TemporaryDirectory(prefix="ab-gateway-logs-") as logs,
        stack(Path(logs)) as controller,
        second_gateway(controller, source) as (base, base_port, _),
        second_gateway(controller, ROOT) as (head, head_port, _),
    ):
        return asyncio.run(compare(wrk, (base.pid, base_port), (head.pid, head_port), args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
