"""The queue-proxy's configuration from flags and from Knative's environment, without sockets."""

from __future__ import annotations

import json

import pytest

from queue_proxy.__main__ import parse_args

KNATIVE_ENV = {
    "CONTAINER_CONCURRENCY": "4",
    "QUEUE_SERVING_PORT": "8012",
    "USER_PORT": "8080",
    "REVISION_TIMEOUT_SECONDS": "120",
    "REVISION_RESPONSE_START_TIMEOUT_SECONDS": "0",
    "REVISION_IDLE_TIMEOUT_SECONDS": "30",
    "SERVING_REVISION": "iris-00002",
    "SERVING_NAMESPACE": "models",
    "SERVING_CONFIGURATION": "iris",
    "SERVING_POD": "iris-00002-deployment-abc",
    "SERVING_LOGGING_LEVEL": "debug",
    "SERVING_READINESS_PROBE": json.dumps({"httpGet": {"path": "/v2/health/ready", "port": 8080}, "periodSeconds": 0}),
}


def test_knative_environment_fills_the_config():
    config = parse_args([], KNATIVE_ENV)
    assert config.upstream == "127.0.0.1:8080" and config.port == 8012 and config.host == "0.0.0.0"
    assert config.container_concurrency == 4 and config.timeout == 120
    assert config.response_start_timeout is None and config.idle_timeout == 30
    assert (config.revision, config.namespace, config.configuration) == ("iris-00002", "models", "iris")
    assert config.pod == "iris-00002-deployment-abc" and config.log_level == "DEBUG"
    assert config.readiness_path == "/v2/health/ready" and config.probe_period == 0


def test_flags_win_and_tcp_probes():
    env = {**KNATIVE_ENV, "SERVING_READINESS_PROBE": json.dumps([{"tcpSocket": {"port": 8080}, "periodSeconds": 5}])}
    config = parse_args(["--container-concurrency", "0", "--host", "127.0.0.1"], env)
    assert config.container_concurrency == 0 and config.host == "127.0.0.1"
    assert config.readiness_path is None and config.probe_period == 5
    assert parse_args(["--readiness-path", ""], {}).readiness_path is None


@pytest.mark.parametrize("argv", [["--container-concurrency", "-1"], ["--timeout", "0"], ["--upstream", "nohost"]])
def test_bad_settings_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(argv, {})
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err


def test_the_queue_proxy_never_loads_aiohttp():
    """aiohttp is ~16 MB of RSS; the queue-proxy serves every port on common.httpserver (issue 3: idle ≤ 40 MB)."""
    import subprocess
    import sys

    code = "import sys, queue_proxy.__main__, queue_proxy.app; print(sorted(m for m in sys.modules if 'aiohttp' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
