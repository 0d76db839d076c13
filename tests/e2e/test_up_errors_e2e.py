"""``servelane up`` refusing to start: a bad spec names its field before anything starts; a gateway port already
taken is said plainly, with exit code 1 and no process left behind."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

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
