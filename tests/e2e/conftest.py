"""``servelane up`` as a real process tree (controller, gateway, model servers, queue-proxies) on free ports."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import ServiceProcess, alive, free_port


@dataclass
class Up:
    process: ServiceProcess
    port: int
    grpc_port: int
    admin_port: int
    metrics_port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def controller(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def cli(self, *args: str) -> tuple[int, str, str]:
        """``servelane <args> --controller <this up>``, as a user runs it."""
        import subprocess

        out = subprocess.run(
            [sys.executable, "-m", "servelane", *args, "--controller", self.controller],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.returncode, out.stdout, out.stderr

    def status(self) -> dict:
        code, out, err = self.cli("status", "--json")
        assert code == 0, err
        return json.loads(out)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, list[int]]:
        """Signal ``up`` (SIGTERM, or SIGINT as a terminal's Ctrl-C sends it); its exit code, and the processes it
        had below it that are still alive after."""
        below = self.process.descendants()
        self.process.signal(sig)
        try:
            self.process.wait(timeout)
        finally:
            code = self.process.stop(5)  # closes the log; SIGTERM and SIGKILL only if it is somehow still running
        return code, [pid for pid in below if alive(pid)]


@pytest.fixture
def servelane_up(tmp_path: Path) -> Iterator:
    started: list[Up] = []

    def start(*paths: Path | str, ready_timeout: float = 90.0) -> Up:
        port, grpc_port, admin_port, metrics_port = free_port(), free_port(), free_port(), free_port()
        process = ServiceProcess.servelane_up(
            *paths, port=port, grpc_port=grpc_port, admin_port=admin_port, metrics_port=metrics_port,
            log_dir=tmp_path / f"logs-{len(started)}",
        )  # fmt: skip
        process.start()
        up = Up(process, port, grpc_port, admin_port, metrics_port)
        started.append(up)
        process.wait_output("servelane: ready in", ready_timeout)
        return up

    yield start
    for up in started:
        if up.process.proc is not None and up.process.proc.poll() is None:
            below = up.process.descendants()
            up.process.stop(60)
            for pid in below:
                if alive(pid):
                    import os
                    import signal

                    os.kill(pid, signal.SIGKILL)
