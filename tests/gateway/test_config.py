"""The gateway's flags and environment into one GatewayConfig; what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.__main__ import parse_args
from gateway.config import GatewayConfig


def test_flags() -> None:
    config = parse_args(["--routes", "r.yaml", "--port", "0", "--grpc-port", "9001", "--domain", "serve.local",
                         "--name", "gw.internal", "--name", "gw"])  # fmt: skip
    assert config.routes == Path("r.yaml") and config.controller is None
    assert (config.port, config.grpc_port, config.admin_port, config.metrics_port) == (0, 9001, 8082, 9092)
    assert config.domain == "serve.local" and config.names == ("gw.internal", "gw")
    assert parse_args(["--routes", "r.yaml", "--name", "localhost:9000"]).names == ("localhost:9000",)
    assert parse_args(["--routes", "r.yaml", "--grpc-port", "-1"]).grpc_port == -1  # no gRPC port
    assert config.admin_host is None  # the admin port listens on --host
    assert config.grpc_authority and not parse_args(["--routes", "r.yaml", "--no-grpc-authority"]).grpc_authority
    assert parse_args(["--routes", "r.yaml", "--admin-host", "127.0.0.1"]).admin_host == "127.0.0.1"


def test_environment_and_flags_win() -> None:
    env = {"SERVELANE_ROUTES": "env.yaml", "SERVELANE_DOMAIN": "env.domain", "SERVELANE_LOG_LEVEL": "DEBUG"}
    config = parse_args([], env)
    assert (config.routes, config.domain, config.log_level) == (Path("env.yaml"), "env.domain", "DEBUG")
    config = parse_args(["--controller", "http://127.0.0.1:9000", "--domain", "flag.domain"], env)
    assert (config.routes, config.controller, config.domain) == (None, "http://127.0.0.1:9000", "flag.domain")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give exactly one of --routes FILE and --controller URL"),
        (["--routes", "a", "--controller", "http://x"], "not allowed with argument"),
        (["--controller", "x:9000"], "must be an http:// or https:// URL"),
        (["--routes", "a", "--port", "70000"], "port must be a port number"),
        (["--routes", "a", "--port", "-1"], "port must be a port number"),
        (["--routes", "a", "--poll-interval", "0"], "poll_interval must be positive"),
        (["--routes", "a", "--name", "localhost:http"], "--name 'localhost:http': give a host name, or host:port"),
        (["--routes", "a", "--name", "localhost:0"], "--name 'localhost:0': give a host name, or host:port"),
        (["--routes", "a", "--name", ":9000"], "--name ':9000': give a host name, or host:port"),
    ],
)
def test_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv, {})
    assert message in capsys.readouterr().err


def test_config_object_checks_on_its_own() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        GatewayConfig()
