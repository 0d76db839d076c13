"""The in-process floor: onnxruntime ``session.run`` in a loop, with the session options the model server uses.

Run as a child process (``python -m bench.floor MODEL INPUTS.npz --duration S --warmup S [--threads N]``) so
that its CPU time (``time.process_time``, every onnxruntime thread included) is the work's alone; prints one JSON
:class:`Load`.
:func:`floor_load` is the parent's side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.loadgen import Load, percentiles_ms


async def floor_load(model: Path, inputs: Path, duration: float, warmup: float, threads: int = 0) -> Load:
    argv = [sys.executable, "-m", "bench.floor", str(model), str(inputs), "--duration", str(duration),
            "--warmup", str(warmup), "--threads", str(threads)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), duration + warmup + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.floor failed (rc={proc.returncode}): {err.decode(errors='replace')[-500:]}")
    return Load(**json.loads(out))


def run(model: Path, inputs: Path, duration: float, warmup: float, threads: int = 0) -> Load:
    import numpy as np
    import onnxruntime as ort

    from model_server.model_config import ModelConfig
    from model_server.onnx_model import OnnxModel, default_providers

    # the server's own options (threads = cores // instances unless given, no spinning), for that config.yaml
    options = OnnxModel("floor", "1", model, ModelConfig(intra_op_threads=threads)).session_options()
    providers = [spec.as_ort() for spec in default_providers()]
    session = ort.InferenceSession(str(model), sess_options=options, providers=providers)
    with np.load(inputs) as data:
        feeds = {name: data[name] for name in data.files}
    _loop(session, feeds, warmup)
    cpu = time.process_time()
    latencies, elapsed = _loop(session, feeds, duration)
    cpu = time.process_time() - cpu
    p50, p99 = percentiles_ms(latencies)
    return Load("in-process", len(latencies), 0, elapsed, p50, p99, None, work_cpu_s=cpu)


def _loop(session, feeds: dict, duration: float) -> tuple[list[float], float]:
    latencies: list[float] = []
    clock = time.perf_counter
    began = clock()
    deadline = began + duration
    while (start := clock()) < deadline:
        session.run(None, feeds)
        latencies.append(clock() - start)
    return latencies, clock() - began


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    p.add_argument("model", type=Path)
    p.add_argument("inputs", type=Path, help=".npz with one array per model input")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: the server's default)")
    args = p.parse_args()
    print(json.dumps(asdict(run(args.model, args.inputs, args.duration, args.warmup, args.threads))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
