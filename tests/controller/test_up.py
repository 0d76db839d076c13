"""``servelane up`` without processes: its flags, the gateway argv the Stack builds, and the lines it prints once
ready (the real process tree is tested in tests/e2e)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from controller import stack, up
from controller.controller import Controller
from tests.controller.scripted import ScriptedScaler, spec


class Unstarted(stack.Stack):
    """The real Stack with its processes left out: no admin API or gateway, scripted replicas, ready at once."""

    made: list[Unstarted] = []

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.controller = Controller(ScriptedScaler(), self.gateway_address, domain=self.domain)
        Unstarted.made.append(self)

    async def start(self) -> None:
        pass

    async def wait_ready(self, stop: asyncio.Event, progress: Any) -> bool:
        return True


async def run_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, *flags: str) -> tuple[list[str], Unstarted]:
    """``up`` with ``flags`` until ready, then stopped at once: the lines it printed and the Stack it built."""
    monkeypatch.setattr(stack, "Stack", Unstarted)
    monkeypatch.setattr(Unstarted, "made", [])
    args = up.up_parser().parse_args([str(tmp_path), "--log-dir", str(tmp_path / "logs"), *flags])
    stop, failed = asyncio.Event(), []
    stop.set()
    await up._up(args, spec(tmp_path, 1), stop, failed)
    assert failed == []
    (made,) = Unstarted.made
    return capsys.readouterr().out.splitlines(), made


def gateway_flag(made: stack.Stack, name: str) -> str:
    argv = made._gateway_argv()
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize(
    "flags, host, port",
    [
        ((), "127.0.0.1", 9092),  # a well-known port by default, as Prometheus configs expect
        (("--metrics-port", "9100", "--host", "0.0.0.0"), "127.0.0.1", 9100),  # every address: scraped on loopback
    ],
)
async def test_up_starts_the_gateway_on_the_metrics_port_and_prints_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, flags: tuple[str, ...], host: str, port: int
):
    lines, made = await run_up(tmp_path, monkeypatch, capsys, *flags)
    assert gateway_flag(made, "--metrics-port") == str(port)
    assert gateway_flag(made, "--admin-host") == "127.0.0.1"  # its /routing lists replicas: loopback, whatever --host
    ready = lines.index(next(line for line in lines if line.startswith("servelane: ready in")))
    assert f"servelane: gateway metrics (Prometheus): http://{host}:{port}/metrics" in lines[ready:]


async def test_metrics_port_zero_is_a_free_port_chosen_once_and_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    lines, made = await run_up(tmp_path, monkeypatch, capsys, "--metrics-port", "0")
    port = made.metrics_port
    assert port > 0
    for _start in range(2):  # a restarted gateway comes back on the same port, so the printed URL stays right
        assert gateway_flag(made, "--metrics-port") == str(port)
    assert f"servelane: gateway metrics (Prometheus): http://127.0.0.1:{port}/metrics" in lines


async def test_up_without_grpc_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    lines, made = await run_up(tmp_path, monkeypatch, capsys, "--grpc-port", "-1")
    assert "servelane: gateway on http://127.0.0.1:8080 (gRPC off)" in lines
    assert not any(":-1" in line for line in lines)
    assert gateway_flag(made, "--grpc-port") == "-1"


@pytest.mark.parametrize("port", ["-1", "65536"])
def test_a_metrics_port_that_is_not_one_is_refused(tmp_path: Path, capsys, port: str):
    with pytest.raises(SystemExit) as exited:
        up.up([str(tmp_path), "--metrics-port", port])
    assert exited.value.code == 2
    assert "--metrics-port must be a port number (0: any free port)" in capsys.readouterr().err


async def test_names_go_to_the_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    _, made = await run_up(tmp_path, monkeypatch, capsys, "--name", "localhost:9000", "--name", "gw.lan")
    argv = made._gateway_argv()
    assert [argv[i + 1] for i, arg in enumerate(argv) if arg == "--name"] == ["localhost:9000", "gw.lan"]


def test_a_name_with_a_port_that_is_not_one_is_refused(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exited:
        up.up([str(tmp_path), "--name", "localhost:http"])
    assert exited.value.code == 2
    assert "--name 'localhost:http': give a host name, or host:port with a port number" in capsys.readouterr().err
