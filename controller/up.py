"""``servelane up``, ``servelane apply`` and ``servelane status``: the whole data path from InferenceService YAML.

``up FILE|DIR ...`` runs, in order::

    parse every spec                    a bad one stops here with the field named, before anything starts; a
                                        field recorded without a local effect is one warning line on stderr
    controller admin API                127.0.0.1:--admin-port (default 8090; what apply and status talk to)
    gateway                             a child process on --port / --grpc-port / --metrics-port, fed by the
                                        controller's long-poll
    apply                               revisions created, replicas (model server + queue-proxy) started
    progress                            one line per revision as its replicas turn ready
    URLs and a curl command             the service hosts, a curl through the gateway that works, and the
                                        gateway's Prometheus /metrics URL (--metrics-port, default 9092)
    wait for Ctrl-C or SIGTERM          then: gateway stopped (it finishes what it has), every replica drained and
                                        stopped, the admin API closed; no process is left behind

A spec's ``servelane.dev/example-request`` annotation (a JSON body for ``:predict``) makes the printed curl a
prediction; without it the curl asks for the model's metadata.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import logs
from common.lifecycle import run_service
from controller.spec import InferenceServiceSpec, SpecError, load_paths, yaml_files
from gateway.config import check_name

DEFAULT_ADMIN = "http://127.0.0.1:8090"
EXAMPLE_ANNOTATION = "servelane.dev/example-request"


def up_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="servelane up", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR", help="InferenceService YAML files or folders")
    p.add_argument("--host", default="127.0.0.1", help="address the gateway listens on")
    p.add_argument("--port", type=int, default=8080, help="gateway HTTP port")
    p.add_argument("--grpc-port", type=int, default=8081, help="gateway gRPC port (-1: none)")
    p.add_argument("--metrics-port", type=int, default=9092, help="gateway Prometheus /metrics port (0: any free port)")
    p.add_argument("--admin-port", type=int, default=8090, help="controller admin API port (apply, status)")
    p.add_argument("--domain", default="example.com")
    p.add_argument("--name", dest="names", action="append", default=[],
                   help="another name of the gateway, routed by model like localhost; host:port: with that port "
                        "only, as a container runtime publishes it (repeatable)")  # fmt: skip
    p.add_argument("--log-dir", type=Path, help="where every process writes its log (default: a temporary folder)")
    p.add_argument("--log-level", default="INFO")
    return p


def up(argv: Sequence[str]) -> int:
    parser = up_parser()
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536 or not (args.grpc_port == -1 or 0 < args.grpc_port < 65536):
        parser.error("--port and --grpc-port must be real ports (the transformers are told them); --grpc-port -1: none")
    if not 0 <= args.metrics_port < 65536:
        parser.error("--metrics-port must be a port number (0: any free port)")
    for name in args.names:
        try:
            check_name(name)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        specs = load_paths(args.paths)
    except SpecError as exc:
        print(f"servelane up: {exc.message}", file=sys.stderr)
        return 2
    for spec in specs:
        warn("up", f"{spec.namespace}/{spec.name}", spec.warnings)
    logs.configure(args.log_level, "controller")
    failed: list[str] = []
    run_service(lambda stop: _up(args, specs, stop, failed))
    if failed:
        print(f"servelane up: {failed[0]}", file=sys.stderr)
        return 1
    return 0


async def _up(
    args: argparse.Namespace, specs: list[InferenceServiceSpec], stop: asyncio.Event, failed: list[str]
) -> None:
    from controller.stack import Stack  # the heavy imports (aiohttp, the scaler) only when serving

    stack = Stack(
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        names=tuple(args.names),
        admin_port=args.admin_port,
        domain=args.domain,
        log_dir=args.log_dir,
    )
    started = time.monotonic()
    try:
        try:
            await stack.start()
        except (RuntimeError, OSError) as exc:  # a port taken, the gateway not starting: said once, plainly
            failed.append(str(exc))
            return
        say(f"controller admin API on http://127.0.0.1:{stack.admin_port}; logs in {stack.log_dir}")
        say(gateway_line(args.host, args.port, args.grpc_port))
        for applied in await stack.controller.apply(specs):
            say(f"{applied.namespace}/{applied.service}: revisions {', '.join(applied.created) or '(unchanged)'}")

        def progress(line: str) -> None:
            say(f"  [{time.monotonic() - started:5.1f}s] {line}")

        if not await stack.wait_ready(stop, progress):
            return
        say(f"ready in {time.monotonic() - started:.1f} s")
        for spec in specs:
            say(urls(spec, args.host, args.port, args.domain))
        say(f"gateway metrics (Prometheus): http://{reachable(args.host)}:{stack.metrics_port}/metrics")
        await stop.wait()
        say("stopping: gateway first, then every replica drains")
    finally:
        await stack.stop()
        say("stopped")


def gateway_line(host: str, port: int, grpc_port: int) -> str:
    grpc = "gRPC off" if grpc_port < 0 else f"gRPC {host}:{grpc_port}"
    return f"gateway on http://{host}:{port} ({grpc})"


def reachable(host: str) -> str:
    """An address a local client can use for a server listening on ``host`` (every address: loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


def urls(spec: InferenceServiceSpec, host: str, port: int, domain: str) -> str:
    hostname = f"{spec.name}.{spec.namespace}.{domain}"
    base = f"http://{reachable(host)}:{port}"
    example = spec.annotations.get(EXAMPLE_ANNOTATION)
    if example:
        curl = (
            f"curl -s {base}/v1/models/{spec.model_name}:predict -H 'Content-Type: application/json' "
            f"-d {shlex.quote(example)}"
        )
    else:
        curl = f"curl -s {base}/v2/models/{spec.model_name}"
    return (
        f"{spec.namespace}/{spec.name}: http://{hostname} (Host header), or by model name on {base}\n"
        f"  try: {curl}\n"
        f"  or:  {curl} -H 'Host: {hostname}'"
    )


def say(line: str) -> None:
    print(f"servelane: {line}", flush=True)


def warn(command: str, service: str, warnings: Sequence[str]) -> None:
    for warning in warnings:
        print(f"servelane {command}: warning: {service}: {warning}", file=sys.stderr, flush=True)


# -- apply and status: clients of a running `up` ---------------------------------------------------------------------
def client_parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"servelane {command}")
    if command == "apply":
        p.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR")
    p.add_argument("--controller", default=DEFAULT_ADMIN, help=f"the admin API of `servelane up` ({DEFAULT_ADMIN})")
    p.add_argument("--json", action="store_true", help="print the controller's JSON answer")
    return p


def apply(argv: Sequence[str]) -> int:
    args = client_parser("apply").parse_args(argv)
    try:
        files = [f for path in args.paths for f in yaml_files(path)]
    except SpecError as exc:
        print(f"servelane apply: {exc.message}", file=sys.stderr)
        return 2
    documents = [{"text": f.read_text(), "base_dir": str(f.parent.resolve()), "source": str(f)} for f in files]
    code, answer = _call(args.controller, "/v1/apply", {"documents": documents})
    if code != 200:
        print(f"servelane apply: {answer.get('error', answer)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    for item in answer["applied"]:
        service = f"{item['namespace']}/{item['service']}"
        created = ", ".join(item["created"]) or "unchanged"
        print(f"{service}: {created}")
        warn("apply", service, item.get("warnings", ()))
    return 0


def status(argv: Sequence[str]) -> int:
    args = client_parser("status").parse_args(argv)
    code, answer = _call(args.controller, "/v1/status")
    if code != 200:
        print(f"servelane status: {answer.get('error', answer)}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else table(answer))
    return 0


def table(report: dict[str, Any]) -> str:
    # IN-FLIGHT: requests in the revision's queue-proxies at the moment of the status call; AVG-CONCURRENCY: the
    # same averaged over the last second (each queue-proxy's Knative stat, what the autoscaler will read); both
    # summed over the revision's replicas
    # ROLLOUT: "latest" (the newest revision), "rolled-out" (the last to take 100 %: a canary's stable side), both,
    # or "retiring" (no traffic, draining)
    rows = [
        ("SERVICE", "COMPONENT", "REVISION", "TRAFFIC", "TAG", "ROLLOUT", "READY", "IN-FLIGHT", "AVG-CONCURRENCY",
         "RESTARTS")
    ]  # fmt: skip
    for service in report["services"]:
        name = f"{service['namespace']}/{service['name']}"
        for component, revisions in service["components"].items():
            for r in revisions:
                replicas = r["replicas"]
                ready = f"{sum(x['ready'] for x in replicas)}/{r['desired']}"
                in_flight = _summed(replicas, "in_flight", "{:d}")
                average = _summed(replicas, "avg_concurrency", "{:.1f}")
                restarts = str(sum(x["restarts"] for x in replicas))
                traffic, tag, rollout = f"{r['percent']}%", r["tag"] or "-", _rollout(r)
                rows.append(
                    (name, component, r["revision"], traffic, tag, rollout, ready, in_flight, average, restarts)
                )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _summed(replicas: list[dict[str, Any]], key: str, form: str) -> str:
    """``key`` summed over the replicas that reported it; "-" when none did."""
    values = [x[key] for x in replicas if x.get(key) is not None]
    return form.format(sum(values)) if values else "-"


def _rollout(revision: dict[str, Any]) -> str:
    roles = [role for role, key in (("latest", "latest"), ("rolled-out", "rolled_out")) if revision.get(key)]
    if roles:
        return ",".join(roles)
    return "retiring" if revision["desired"] == 0 else "-"


def _call(base: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base.rstrip("/") + path,
        data=data,
        method="POST" if data else "GET",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {"error": f"HTTP {exc.code}"}
    except OSError as exc:
        return 0, {"error": f"no servelane up answers at {base} ({exc}); is it running?"}
