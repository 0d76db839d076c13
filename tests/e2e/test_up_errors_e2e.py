"""``servelane up`` refusing to start: a bad spec names its field before anything starts; a gateway port already
taken is said plainly, with exit code 1 and no process left behind. And ``up`` told to stop (SIGTERM, or SIGINT as
Ctrl-C) before it is ready: exit code 0, every process it started stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import ROOT, ServiceProcess, alive, argv, free_port


def test_a_bad_spec_stops_up_before_anything_starts(tmp_path: Path):
    spec = (ROOT / "examples" / "sklearn-iris.yaml").read_text().replace("name: onnx", "name: sklearn")
    (tmp_path / "bad.yaml").write_text(spec)
    out = subprocess.run(
        [sys.executable, "-m", "servelane", "up", str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "spec.predictor.model.modelFormat.name" in out.stderr and "ONNX" in out.stderr


def test_port_zero_is_refused_because_transformers_are_told_the_port():
    out = subprocess.run([sys.executable, "-m", "servelane", "up", str(ROOT / "examples"), "--port", "0"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "must be real ports" in out.stderr


def test_a_taken_gateway_port_is_an_error_and_leaves_nothing(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = ServiceProcess.servelane_up(
            ROOT / "examples", port=port, grpc_port=free_port(), admin_port=free_port(), log_dir=tmp_path
        )
        up.start()
        try:
            assert up.wait(60) == 1
        finally:
            up.stop()
    assert "servelane up: the gateway exited (1)" in up.output()
    assert [pid for pid in _pids() if _listens_on(argv(pid), port) and alive(pid)] == []  # no gateway left over


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _listens_on(args: list[str], port: int) -> bool:
    return any(a == "--port" and b == str(port) for a, b in zip(args, args[1:]))


NEVER_READY = """
import asyncio

from model_server.model import Model


class NeverReady(Model):
    async def load(self) -> None:
        await asyncio.Event().wait()  # still loading, for as long as it runs: up never gets to "ready in"
"""
SPEC = """apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: loading
spec:
  predictor:
    containers:
      - args: ["--model-class", "never_ready.py:NeverReady"]
"""
MARKER = "UP_SIGNAL_TEST_MARKER"  # not SERVELANE_*: no service reads it
GATEWAY_STARTED = "servelane: gateway on http://"
FIRST_PROGRESS = "loading-predictor-00001: 0/1 replicas ready (starting)"
REPLICA_SERVING = "loading-predictor-00001-1.model-server.log"  # once it says it listens: a replica up, not ready


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize(
    "moment", [GATEWAY_STARTED, FIRST_PROGRESS, REPLICA_SERVING], ids=["gateway", "progress", "replica"]
)
def test_a_signal_before_ready_stops_up_with_0_and_leaves_nothing(tmp_path: Path, moment: str, sig: int):
    (tmp_path / "never_ready.py").write_text(NEVER_READY)
    (tmp_path / "loading.yaml").write_text(SPEC)
    marker = f"{tmp_path.name}-{os.getpid()}"  # inherited by every process up starts, whoever reaps it later
    up = ServiceProcess.servelane_up(
        tmp_path / "loading.yaml", port=free_port(), grpc_port=free_port(), admin_port=free_port(),
        metrics_port=free_port(), log_dir=tmp_path / "logs",
    )  # fmt: skip
    up.env[MARKER] = marker
    up.start()
    try:
        if moment == REPLICA_SERVING:
            _wait_for_text(tmp_path / "logs" / REPLICA_SERVING, "listening", up, 20)
        else:
            up.wait_output(moment, 20)
        seen = set(up.descendants())
        up.signal(sig)
        deadline = time.monotonic() + 15
        while up.proc is not None and up.proc.poll() is None and time.monotonic() < deadline:
            seen.update(up.descendants())  # replicas spawned after the signal (apply still running) count too
            time.sleep(0.02)
        code = up.proc.poll() if up.proc is not None else None
        assert code is not None, f"up still running 15 s after {signal.Signals(sig).name}:\n{up.output()}"
    finally:
        up.stop(5)
    output = up.output()
    assert "servelane: ready in" not in output
    assert code == 0, output
    assert output.splitlines()[-1] == "servelane: stopped", output  # every process stopped before it says so
    assert "gateway exited (code 0)" in output  # stopped by up, not left to its parent-death signal
    assert seen, "up had started no process yet: nothing was tested"
    assert [pid for pid in seen if alive(pid)] == []
    assert [pid for pid in _pids() if _marked(pid, marker) and alive(pid)] == []


def _wait_for_text(path: Path, text: str, up: ServiceProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text(errors="replace")):
        assert up.proc is not None and up.proc.poll() is None, up.output()
        assert time.monotonic() < deadline, f"{path.name} never said {text!r}:\n{up.output()}"
        time.sleep(0.05)


def _marked(pid: int, marker: str) -> bool:
    try:
        return f"{MARKER}={marker}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
