"""``servelane queue-proxy`` / ``python -m queue_proxy``: parse the config, serve, drain on SIGTERM, exit 0.

Every flag also reads Knative's queue-proxy environment (``CONTAINER_CONCURRENCY``, ``QUEUE_SERVING_PORT``,
``USER_PORT``, ``REVISION_TIMEOUT_SECONDS``, ``SERVING_REVISION``, ``SERVING_POD``, ``SERVING_READINESS_PROBE``, ...),
so the queue-proxy can replace Knative's in a pod spec. Flags win over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import fields

from common import logs
from common.lifecycle import run_service, settled
from queue_proxy.config import QueueProxyConfig

DEFAULTS = {f.name: f.default for f in fields(QueueProxyConfig)}


def _seconds(value: str | None) -> float | None:
    """Knative's optional timeouts: absent or 0 means off."""
    return float(value) if value and float(value) > 0 else None


def env_defaults(env: Mapping[str, str]) -> dict[str, object]:
    """Defaults taken from Knative's environment for the queue-proxy container."""
    out: dict[str, object] = {}
    if "USER_PORT" in env:
        out["upstream"] = f"127.0.0.1:{env['USER_PORT']}"
    if "QUEUE_SERVING_PORT" in env:
        out["port"] = int(env["QUEUE_SERVING_PORT"])
        out["host"] = "0.0.0.0"  # in a pod the kubelet and the ingress reach the queue-proxy on the pod IP
    if "CONTAINER_CONCURRENCY" in env:
        out["container_concurrency"] = int(env["CONTAINER_CONCURRENCY"])
    if "REVISION_TIMEOUT_SECONDS" in env:
        out["timeout"] = float(env["REVISION_TIMEOUT_SECONDS"])
    out["response_start_timeout"] = _seconds(env.get("REVISION_RESPONSE_START_TIMEOUT_SECONDS"))
    out["idle_timeout"] = _seconds(env.get("REVISION_IDLE_TIMEOUT_SECONDS"))
    for key, name in (("revision", "SERVING_REVISION"), ("namespace", "SERVING_NAMESPACE"),
                      ("configuration", "SERVING_CONFIGURATION"), ("service", "SERVING_SERVICE"),
                      ("pod", "SERVING_POD"), ("log_level", "SERVING_LOGGING_LEVEL")):
        if env.get(name):
            out[key] = env[name].upper() if key == "log_level" else env[name]
    if env.get("SERVING_READINESS_PROBE"):
        out.update(_readiness_probe(env["SERVING_READINESS_PROBE"]))
    return out


def _readiness_probe(raw: str) -> dict[str, object]:
    """The user container's probe as Knative passes it (a corev1.Probe, or a list of them), as our probe settings."""
    probe = json.loads(raw)
    if isinstance(probe, list):
        probe = probe[0] if probe else {}
    out: dict[str, object] = {"probe_period": float(probe.get("periodSeconds") or 0)}
    if "httpGet" in probe:
        out["readiness_path"] = probe["httpGet"].get("path") or "/"
    elif "tcpSocket" in probe:
        out["readiness_path"] = None
    return out


def parse_args(argv: list[str], env: Mapping[str, str] = os.environ) -> QueueProxyConfig:
    d = {**DEFAULTS, **env_defaults(env)}
    p = argparse.ArgumentParser(prog="servelane queue-proxy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", default=d["upstream"], help="the model server's HTTP host:port")
    p.add_argument("--upstream-grpc", default=d["upstream_grpc"], help="the model server's gRPC host:port")
    p.add_argument("--host", default=d["host"])
    for name in ("port", "grpc_port", "admin_port", "stats_port", "metrics_port"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=d[name])
    p.add_argument("--container-concurrency", type=int, default=d["container_concurrency"],
                   help="requests the model server may run at once (0: unlimited); 10x that may queue")
    p.add_argument("--timeout", type=float, default=d["timeout"], help="total seconds per request, queue included")
    p.add_argument("--response-start-timeout", type=float, default=d["response_start_timeout"])
    p.add_argument("--idle-timeout", type=float, default=d["idle_timeout"])
    p.add_argument("--readiness-path", default=d["readiness_path"],
                   help="GET this path on the upstream to probe it; empty: a TCP connect")
    p.add_argument("--probe-period", type=float, default=d["probe_period"],
                   help="0: probe aggressively (every 50 ms for up to 10 s) when asked")
    p.add_argument("--drain-quiet-period", type=float, default=d["drain_quiet_period"],
                   help="after SIGTERM, seconds without a new request before shutting down (Knative: 30)")
    for name in ("revision", "namespace", "configuration", "service", "pod", "log_level"):
        p.add_argument(f"--{name.replace('_', '-')}", default=d[name])
    args = vars(p.parse_args(argv))
    if args["readiness_path"] == "":
        args["readiness_path"] = None
    try:
        return QueueProxyConfig(**args)
    except ValueError as exc:
        p.error(str(exc))
        raise


def main(argv: list[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure(config.log_level, "queue-proxy")

    async def serve(stop: asyncio.Event) -> None:
        from queue_proxy.app import QueueProxy

        proxy = QueueProxy(config)
        await proxy.start()
        settled()
        await proxy.run_until_drained(stop)

    return run_service(serve)


if __name__ == "__main__":
    sys.exit(main())
