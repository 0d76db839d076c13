"""Load generators: closed-loop, bounded in time, each returning one :class:`Load`.

* :func:`wrk_load` drives HTTP with ``wrk`` (C, one thread, one connection per concurrent client), so the client
  costs little of the CPU it shares with the server. Bodies come from a file (binary bodies work); ``wrk`` takes
  whole seconds only.
* :func:`http_load` is the pure-Python fallback (aiohttp, one connection per worker) when wrk is missing.
* :func:`grpc_load` drives a unary gRPC method over one grpc.aio channel with pre-serialized request bytes (no
  protobuf work on the client side).

Any non-200 answer (for wrk: any status >= 400, what it can count without parsing responses), failed RPC or
transport error counts as an error; the first one (for wrk, the counts by kind) is kept as ``error_sample``.
Response bodies are read but not checked here: suites send one checked probe per case before loading it.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import numpy as np

WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")
REQUEST_TIMEOUT = 30.0  # seconds; a stuck request ends the phase at most this long after its deadline


@dataclass(frozen=True, slots=True)
class HttpRequest:
    url: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class GrpcRequest:
    target: str  # host:port
    method: str  # /package.Service/Method
    payload: bytes  # the serialized request message
    metadata: tuple[tuple[str, str], ...] = ()
    authority: str | None = None  # the channel's :authority (grpc.default_authority); None: the target

    def channel(self) -> grpc.aio.Channel:
        """A channel for these calls, with no message size limit."""
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        if self.authority is not None:
            options.append(("grpc.default_authority", self.authority))
        return grpc.aio.insecure_channel(self.target, options=options)


@dataclass(frozen=True, slots=True)
class Load:
    generator: str
    requests: int  # completed, errors included
    errors: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float | None  # the load generator's own CPU, when it can be told apart
    work_cpu_s: float | None = None  # CPU of the measured work itself, for in-process cases (no server pid)
    error_sample: str = ""


def find_wrk(install: bool) -> str | None:
    """The wrk binary; when missing and ``install``, try ``apt-get install wrk`` once (root only, bounded)."""
    return find_or_install("wrk", ("wrk",), install)


def find_or_install(binary: str, packages: tuple[str, ...], install: bool) -> str | None:
    """``binary`` (also looked for in the sbin folders); when missing and ``install``, try ``apt-get install`` of
    each package in turn, then again after ``apt-get update`` (root only, each step bounded)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    path = shutil.which(binary, path=search)
    if path or not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return path
    installs = [["apt-get", "install", "-y", "-q", package] for package in packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (*installs, ["apt-get", "update", "-q"], *installs):
        try:
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180, check=False,
                           env=env)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if path := shutil.which(binary, path=search):
            return path
    return None


async def wrk_load(wrk: str, request: HttpRequest, concurrency: int, duration: float) -> Load:
    seconds = max(1, round(duration))
    with tempfile.NamedTemporaryFile(prefix="bench-body-", suffix=".bin") as body:
        body.write(request.body)
        body.flush()
        argv = [wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", f"--timeout={int(REQUEST_TIMEOUT)}s",
                "-s", str(WRK_SCRIPT)]
        for name, value in request.headers:
            argv += ["-H", f"{name}: {value}"]
        argv += [request.url, "--", body.name]
        before = _children_cpu()
        proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + REQUEST_TIMEOUT + 10)
        client_cpu = _children_cpu() - before
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (rc={proc.returncode}): {text.strip()[-500:]}")
    r = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(int(r[k]) for k in ("connect", "read", "write", "status", "timeout"))
    sample = ", ".join(f"{k}={r[k]}" for k in ("connect", "read", "write", "status", "timeout") if r[k])
    return Load("wrk", int(r["requests"]), errors, r["duration_us"] / 1e6, r["p50_us"] / 1e3, r["p99_us"] / 1e3,
                client_cpu, error_sample=sample and f"wrk errors: {sample} (status = HTTP >= 400)")


async def http_load(request: HttpRequest, concurrency: int, duration: float) -> Load:
    # identity: aiohttp asks for gzip by default, and the server would then spend the run compressing
    headers = {**dict(request.headers), "Accept-Encoding": "identity"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:

        async def once() -> str | None:
            async with session.post(request.url, data=request.body, headers=headers) as response:
                body = await response.read()
                return None if response.status == 200 else f"HTTP {response.status}: {body[:200]!r}"

        return await _closed_loop("aiohttp", once, concurrency, duration, (aiohttp.ClientError, asyncio.TimeoutError))


async def grpc_load(request: GrpcRequest, concurrency: int, duration: float) -> Load:
    async with request.channel() as channel:
        call = channel.unary_unary(request.method)  # no serializers: bytes in, bytes out
        metadata = request.metadata or None

        async def once() -> str | None:
            await call(request.payload, timeout=REQUEST_TIMEOUT, metadata=metadata)
            return None

        return await _closed_loop("grpc.aio", once, concurrency, duration, (grpc.aio.AioRpcError,))


async def _closed_loop(
    name: str, once: Callable[[], Awaitable[str | None]], concurrency: int, duration: float,
    failures: tuple[type[BaseException], ...],
) -> Load:
    latencies: list[float] = []
    errors: list[str] = []
    clock = time.perf_counter
    deadline = clock() + duration

    async def worker() -> None:
        while (start := clock()) < deadline:
            try:
                error = await once()
            except failures as exc:
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
            latencies.append(clock() - start)
            if error is not None:
                errors.append(error)

    cpu, began = time.process_time(), clock()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = clock() - began, time.process_time() - cpu
    p50, p99 = percentiles_ms(latencies)
    return Load(name, len(latencies), len(errors), elapsed, p50, p99, cpu, error_sample=errors[0] if errors else "")


def percentiles_ms(latencies_s: list[float]) -> tuple[float, float]:
    if not latencies_s:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(latencies_s), [50, 99])
    return float(p50) * 1e3, float(p99) * 1e3


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def http_driver(request: HttpRequest, wrk: str | None) -> Callable[[int, float], Awaitable[Load]]:
    """A case's ``drive``: wrk when there is one, else the aiohttp generator."""
    if wrk:
        return lambda concurrency, duration: wrk_load(wrk, request, concurrency, duration)
    return lambda concurrency, duration: http_load(request, concurrency, duration)


def grpc_driver(request: GrpcRequest) -> Callable[[int, float], Awaitable[Load]]:
    return lambda concurrency, duration: grpc_load(request, concurrency, duration)
