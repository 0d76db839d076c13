"""Starting real servelane processes for tests and benchmarks: free ports, readiness waits, clean stops.

A :class:`ServiceProcess` runs ``python -m <package> ...`` with output captured to a file, waits until an HTTP
URL answers 200, and on stop sends SIGTERM and waits for the exit code (killing only as a last resort).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from common.httpserver import Handler, HttpServer
from common.lifecycle import free_port

__all__ = ["ServiceProcess", "alive", "argv", "descendants", "free_port", "lean_server"]

ROOT = Path(__file__).resolve().parent.parent


class ServiceProcess:
    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.argv = [sys.executable, "-m", module, *args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd  # a module runs from this source tree (bench.ab_gateway starts one from another revision)
        self._log = tempfile.NamedTemporaryFile(prefix=f"{module}-", suffix=".log", delete=False)
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def command(cls, argv: list[str], env: dict[str, str] | None = None) -> ServiceProcess:
        """Any program, not a Python module (nginx in the benchmarks, say), with the same start/wait/stop."""
        process = cls(Path(argv[0]).name, env=env)
        process.argv = list(argv)
        return process

    @classmethod
    def servelane_up(
        cls, *paths: Path | str, port: int, grpc_port: int, admin_port: int, log_dir: Path, metrics_port: int = 0
    ) -> ServiceProcess:
        """``servelane up PATHS`` on the given ports (tests and the stack benchmark); the gateway's metrics on
        ``metrics_port``, by default a free port the stack picks (never up's fixed 9092: runs may overlap)."""
        return cls(
            "servelane", "up", *map(str, paths), "--port", str(port), "--grpc-port", str(grpc_port),
            "--admin-port", str(admin_port), "--metrics-port", str(metrics_port), "--log-dir", str(log_dir),
        )  # fmt: skip

    def __repr__(self) -> str:
        state = "not started" if self.proc is None else f"pid={self.proc.pid} rc={self.proc.poll()}"
        shown = self.argv[2:] if self.argv[0] == sys.executable else self.argv
        return f"<ServiceProcess {' '.join(shown)} {state}>"

    def start(self) -> ServiceProcess:
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 30.0, host: str | None = None) -> None:
        """Wait until GET url (with ``Host: host`` when given) answers 200; fail with the process output if it exits
        or time runs out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self!r} exited early:\n{self.output()}")
            try:
                request = urllib.request.Request(url, headers={"Host": host} if host else {})
                with urllib.request.urlopen(request, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{url} not ready after {timeout}s; output:\n{self.output()}")

    def wait_output(self, text: str, timeout: float = 60.0) -> str:
        """Wait until ``text`` appears in the process output; fail with the output if it exits or time runs out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            output = self.output()
            if text in output:
                return output
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self!r} exited before printing {text!r}:\n{output}")
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} not printed after {timeout}s; output:\n{self.output()}")

    def descendants(self) -> list[int]:
        """Every live process below this one (children, grandchildren, ...), from /proc."""
        assert self.proc is not None
        return descendants(self.proc.pid)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; SIGKILL only if it does not exit in time. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def descendants(pid: int) -> list[int]:
    """Live processes below ``pid`` (Linux /proc; zombies count as gone)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@contextlib.asynccontextmanager
async def lean_server(handler: Handler) -> AsyncIterator[aiohttp.ClientSession]:
    """``handler`` served by common.httpserver on a free 127.0.0.1 port; yields a client session bound to it."""
    server = HttpServer(handler)
    port = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        await server.stop(1.0)


def argv(pid: int) -> list[str]:
    """The command line of a process, from /proc; [] if it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []
