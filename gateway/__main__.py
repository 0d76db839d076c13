"""``servelane gateway`` / ``python -m gateway``: parse the config, serve, reload routes on SIGHUP, stop on SIGTERM.

Flags win over the environment: ``SERVELANE_ROUTES``, ``SERVELANE_CONTROLLER``, ``SERVELANE_DOMAIN``,
``SERVELANE_LOG_LEVEL``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

from common import logs
from common.errors import InvalidInput
from common.lifecycle import run_service, settled
from gateway.config import GatewayConfig

DEFAULTS = {f.name: f.default for f in fields(GatewayConfig)}
_ENV = {"routes": "SERVELANE_ROUTES", "controller": "SERVELANE_CONTROLLER", "domain": "SERVELANE_DOMAIN",
        "log_level": "SERVELANE_LOG_LEVEL"}  # fmt: skip


def parse_args(argv: list[str], env: Mapping[str, str] = os.environ) -> GatewayConfig:
    from_env = {key: env[name] for key, name in _ENV.items() if env.get(name)}
    d = {**DEFAULTS, **from_env, "routes": None, "controller": None}  # the source: a flag's, else the environment's
    p = argparse.ArgumentParser(prog="servelane gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    source = p.add_mutually_exclusive_group()
    source.add_argument("--routes", type=Path, default=d["routes"], help="routing-state file (YAML or JSON)")
    source.add_argument("--controller", default=d["controller"], help="controller base URL to long-poll")
    p.add_argument("--host", default=d["host"], help="address to listen on (0.0.0.0: every address)")
    p.add_argument("--admin-host", default=d["admin_host"], help="the admin port's address (default: --host)")
    for name in ("port", "grpc_port", "admin_port", "metrics_port"):
        extra = "; -1: no gRPC" if name == "grpc_port" else ""
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=d[name], help=f"0: any free port{extra}")
    p.add_argument("--no-grpc-authority", dest="grpc_authority", action="store_false", default=d["grpc_authority"],
                   help="route gRPC calls by x-servelane-host and model name only, not :authority (no relay in "
                        "front of the gRPC port)")  # fmt: skip
    p.add_argument("--domain", default=d["domain"], help="the external domain (default: the routing state's)")
    p.add_argument("--name", dest="names", action="append", default=list(d["names"]),
                   help="another host name of this gateway, routed by path like localhost; host:port: with that port "
                        "only, as a container runtime publishes it (repeatable)")  # fmt: skip
    p.add_argument("--poll-interval", type=float, default=d["poll_interval"], help="seconds between file checks")
    p.add_argument("--controller-wait", type=float, default=d["controller_wait"], help="long-poll seconds")
    p.add_argument("--max-backoff", type=float, default=d["max_backoff"], help="retry cap while the controller is away")
    p.add_argument("--grace-period", type=float, default=d["grace_period"], help="seconds in-flight requests get")
    p.add_argument("--max-message-bytes", type=int, default=d["max_message_bytes"], help="gRPC, each way")
    p.add_argument("--log-level", default=d["log_level"])
    args = vars(p.parse_args(argv))
    args["names"] = tuple(args["names"])
    if args["routes"] is None and args["controller"] is None:
        args["routes"] = Path(from_env["routes"]) if "routes" in from_env else None
        args["controller"] = from_env.get("controller")
    try:
        return GatewayConfig(**args)
    except ValueError as exc:
        p.error(str(exc))
        raise


def main(argv: list[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure(config.log_level, "gateway")

    async def serve(stop: asyncio.Event) -> None:
        from gateway.app import Gateway
        from gateway.sources import FileSource

        gateway = Gateway(config)
        await gateway.start()
        settled()
        if isinstance(gateway.source, FileSource):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, gateway.source.reload)
        await gateway.run(stop)

    try:
        return run_service(serve)
    except (InvalidInput, OSError) as exc:  # a bad routes file, a port in use: said once, no traceback
        print(f"servelane gateway: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
