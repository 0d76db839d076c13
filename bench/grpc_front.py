"""``python -m bench.grpc_front [--calls N] [--rounds R]``: what the gateway's gRPC front costs per unary call.

The front (:class:`gateway.grpc_front.GrpcFront`) runs alone in this process, in front of a gRPC echo server in a
child process on a Unix socket, as the gateway's gRPC proxy sits behind it. A client in another child makes
sequential unary calls of the shape the stack suite's gRPC cases make (the iris ``ModelInfer`` message, the channel
authority ``sklearn-iris-predictor.default.example.com``, a deadline), first straight to the echo server's socket,
then through the front, in turn, ``rounds`` times. Each round prints the client's p50 both ways and this process's
CPU per call through the front (every bit of it is the front's: reading each header block's HPACK, the two extra
reads and writes); the last line gives the medians over rounds.

Why it exists: the stack suite measures the front as the difference between two gateways, one with it and one
without, each costing 700 to 900 µs of CPU per gRPC call, so the front's share drowns in the noise of a shared VM.
Here nothing else runs in the measured process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from gateway.grpc_front import GrpcFront

AUTHORITY = "sklearn-iris-predictor.default.example.com"
ECHO = """
import asyncio, sys, grpc
class Echo(grpc.GenericRpcHandler):
    def service(self, details):
        async def echo(request, context):
            return request
        return grpc.unary_unary_rpc_method_handler(echo)
async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Echo(),))
    server.add_insecure_port(sys.argv[1])
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""
CLIENT = """
import asyncio, json, sys, time
import grpc
import numpy as np
from bench.model_server import grpc_infer
async def main(target, calls):
    options = [("grpc.default_authority", sys.argv[3])]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        iris = np.array([[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]], dtype=np.float32)
        payload = grpc_infer(target, "sklearn-iris", "input", iris).payload
        for _ in range(200):
            await call(payload, timeout=30)
        print("warm", flush=True)
        sys.stdin.readline()
        took = []
        for _ in range(calls):
            started = time.perf_counter()
            await call(payload, timeout=30)
            took.append(time.perf_counter() - started)
        took.sort()
        print(json.dumps({"p50_us": took[len(took) // 2] * 1e6}), flush=True)
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def client_run(target: str, calls: int, measure: bool) -> tuple[float, float]:
    """One client's sequential calls to ``target``: its p50 (µs), and this process's CPU per call meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, target, str(calls), AUTHORITY,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if await proc.stdout.readline() != b"warm\n":
            raise RuntimeError("the gRPC client did not start")
        before = time.process_time()
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        line = await proc.stdout.readline()
        spent = time.process_time() - before
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return json.loads(line)["p50_us"], spent / calls * 1e6 if measure else 0.0


async def run(calls: int, rounds: int) -> None:
    folder = tempfile.mkdtemp(prefix="bench-grpc-front-")
    socket = Path(folder) / "echo.sock"
    echo = await asyncio.create_subprocess_exec(sys.executable, "-c", ECHO, f"unix:{socket}",
                                                stdout=asyncio.subprocess.PIPE)  # fmt: skip
    assert echo.stdout is not None
    front = GrpcFront()
    front.socket = socket  # the front relays to the echo server in the gRPC proxy's place
    try:
        if await echo.stdout.readline() != b"ready\n":
            raise RuntimeError("the echo server did not start")
        port = await front.start("127.0.0.1", 0)
        direct, through, cpu = [], [], []
        for n in range(rounds):
            direct.append((await client_run(f"unix:{socket}", calls, measure=False))[0])
            p50, spent = await client_run(f"127.0.0.1:{port}", calls, measure=True)
            through.append(p50)
            cpu.append(spent)
            print(f"round {n + 1}: p50 direct {direct[-1]:.0f} us, through the front {p50:.0f} us; "
                  f"the front's CPU {spent:.1f} us/call", flush=True)  # fmt: skip
        med = statistics.median
        print(f"median of {rounds} rounds of {calls} calls: p50 direct {med(direct):.0f} us, through the front "
              f"{med(through):.0f} us (+{med(t - d for t, d in zip(through, direct, strict=True)):.0f}); "
              f"the front's CPU {med(cpu):.1f} us/call")  # fmt: skip
    finally:
        await front.stop()
        echo.kill()
        await echo.wait()
        socket.unlink(missing_ok=True)
        os.rmdir(folder)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_front", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--calls", type=int, default=3000, help="sequential calls per client run")
    p.add_argument("--rounds", type=int, default=5, help="runs of each client, taken in turn")
    args = p.parse_args(argv)
    uvloop.run(run(args.calls, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
