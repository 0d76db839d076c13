"""The stack suite (issue 5): ``servelane up examples/`` end to end against the iris predictor alone, hop by hop.

The suite starts ``servelane up examples/`` (controller, gateway, and one replica each of the iris predictor and
transformer: a model server and a queue-proxy per replica) on free ports, and beside it a standalone predictor
started with the predictor replica's own model-server flags (read from its command line), ports aside.

Cases (``<path>@c<concurrency>``, at 1 and 16), each POSTing KServe's V1 body
``{"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}`` to ``/v1/models/sklearn-iris:predict``:

* ``predictor``: the standalone predictor, direct;
* ``qp-predictor``: the predictor replica's queue-proxy (queue-proxy → predictor);
* ``relay-predictor``: :mod:`bench.py_relay` in the gateway's place (relay → queue-proxy → predictor), the least
  a Python hop on uvloop can do there (bytes passed as they came): the floor for the gateway's own cost;
* ``lean-predictor``: :mod:`bench.py_lean_hop` there, with the predictor's Host: the gateway's per-request work
  (Host routing, Knative and forwarding headers, request id, Server-Timing, outcome counts) on raw bytes, in
  about five Python calls: what the gateway could cost with a fast lane that touched that little code;
* ``gateway-predictor``: the gateway with ``Host: sklearn-iris-predictor.default.example.com``
  (gateway → queue-proxy → predictor);
* ``full``: the gateway by model name, as a user calls it (gateway → queue-proxy → transformer → gateway →
  queue-proxy → predictor): the transformer calls its predictor through the same gateway, over V2 REST.

The same over gRPC (``ModelInfer`` of the iris tensor, class indices back), to measure the gateway's gRPC front
(:mod:`gateway.grpc_front`, which reads each call's ``:authority``) beside a gateway without it:

* ``grpc-qp-predictor``: the predictor replica's queue-proxy gRPC port;
* ``grpc-gateway-predictor``: the gateway's gRPC port with the channel authority
  ``sklearn-iris-predictor.default.example.com`` (front → gRPC proxy → queue-proxy → predictor);
* ``grpc-nofront-predictor``: a second gateway, ``--no-grpc-authority``, fed by the same controller, routed by the
  ``x-servelane-host`` metadata entry instead (gRPC proxy → queue-proxy → predictor); its CPU is ``nofront``.

A probe checks each path's answer first: class indices ``[1, 1]`` from the predictor paths, ``["versicolor",
"versicolor"]`` on the full path. Server CPU (``srv``) is the process the load talks to; beside it, every process
on the case's path has its own column of CPU per request: ``relay``, ``lean``, ``gateway``, ``trans-qp`` and
``trans-ms`` (the transformer's queue-proxy and model server), ``pred-qp`` and ``pred-ms`` (the predictor's); in
the ``predictor`` row ``pred-ms`` is the standalone predictor. The processes are found below ``up`` in /proc by
command line: the queue-proxy whose ``--port`` is a replica's address in the controller's /v1/status, the model
server whose ``--http-port`` is that queue-proxy's ``--upstream``. On the full path ``gateway`` counts both passes
through it.

Ratios (issue 5's targets; each computed within a repeat, median over repeats): the queue-proxy's added p50 at c1
(qp-predictor - predictor, <= 0.15 ms) and the gateway's (gateway-predictor - qp-predictor, <= 0.15 ms), the
same at c16 for information; the gateway's CPU per request (in gateway-predictor) and the predictor queue-proxy's
(in qp-predictor) at c1 and c16 (<= 100 us each), and for information the two side by side in one chain (both in
gateway-predictor: the queue-proxy's CPU there, and gateway / queue-proxy) and the gateway against the bare
relay and the lean hop in its place (their added p50 and CPU, and gateway / each); the full path's p50 and rps against
the predictor alone's, and the CPU per request of every process on the full path.

After the load, a few hundred sequential requests through the full path and through gateway-predictor give each
hop's share from ``Server-Timing`` (each hop appends ``<hop>;dur=<ms>``, the time from receiving the request to
its upstream's response headers; the model server adds ``preprocess``, ``predict``, ``postprocess``): the median
of every entry, and of the differences between nested ones (the gateway's own time = gateway - queue-proxy, and
so on), in the notes under the table. At the end ``up`` gets SIGTERM, and the notes say if anything was left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import aiohttp
import numpy as np

from bench.harness import Case, Measurement, Options, Ratio, SuiteResult, probed, run_suite
from bench.loadgen import GrpcRequest, HttpRequest, grpc_driver, http_driver
from bench.model_server import Check, grpc_infer, probe_http
from model_server.grpc_gen import inference_pb2 as pb
from tests.harness import ROOT, ServiceProcess, alive, argv, descendants, free_port

HOST = "127.0.0.1"
MODEL = "sklearn-iris"
PREDICTOR_HOST = "sklearn-iris-predictor.default.example.com"  # KServe's component host, as the gateway routes it
BODY = json.dumps({"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}).encode()
CLASSES, SPECIES = [1, 1], ["versicolor", "versicolor"]
CONCURRENCIES = (1, 16)
PATHS = ("predictor", "qp-predictor", "relay-predictor", "lean-predictor", "gateway-predictor", "full")
GRPC_PATHS = ("grpc-qp-predictor", "grpc-gateway-predictor", "grpc-nofront-predictor")
# side by side: every path at one concurrency
KEYS = [f"{path}@c{c}" for c in CONCURRENCIES for path in (*PATHS, *GRPC_PATHS)]
HOPS = ("relay", "lean", "gateway", "nofront", "trans-qp", "trans-ms", "pred-qp", "pred-ms")
ON_PATH = {
    "predictor": ("pred-ms",),
    "qp-predictor": ("pred-qp", "pred-ms"),
    "relay-predictor": ("relay", "pred-qp", "pred-ms"),
    "lean-predictor": ("lean", "pred-qp", "pred-ms"),
    "gateway-predictor": ("gateway", "pred-qp", "pred-ms"),
    "full": ("gateway", "trans-qp", "trans-ms", "pred-qp", "pred-ms"),
    "grpc-qp-predictor": ("pred-qp", "pred-ms"),
    "grpc-gateway-predictor": ("gateway", "pred-qp", "pred-ms"),
    "grpc-nofront-predictor": ("nofront", "pred-qp", "pred-ms"),
}
READY_TIMEOUT = 120.0  # seconds for `servelane up` to print "ready in"
STOP_TIMEOUT = 60.0
TIMING_REQUESTS = 300  # sequential requests per path for the Server-Timing shares


# -- what the suite starts -------------------------------------------------------------------------------------


@dataclass
class Stack:
    gateway_port: int
    qp_port: int  # the predictor replica's queue-proxy
    alone_port: int  # the standalone predictor
    relay_port: int  # bench.py_relay in front of the predictor replica's queue-proxy
    lean_port: int  # bench.py_lean_hop there
    grpc_ports: dict[str, int]  # gRPC: "gateway", "qp" (the predictor replica's queue-proxy), "nofront"
    pids: dict[str, int]  # hop -> pid, "alone" -> the standalone predictor, "relay" and "lean" -> the floors
    notes: list[str] = field(default_factory=list)


def command_lines(root: int) -> dict[int, list[str]]:
    """pid -> argv of every live process below ``root``."""
    return {pid: args for pid in descendants(root) if (args := argv(pid))}


def flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def _port(address: str | None) -> str | None:
    return None if address is None else address.rsplit(":", 1)[1]


def _one(procs: dict[int, list[str]], module: str, name: str, value: str | None, what: str) -> int:
    found = [pid for pid, argv in procs.items() if flag(argv, "-m") == module and flag(argv, name) == value]
    if len(found) != 1:
        shown = "\n".join(" ".join(argv) for argv in procs.values())
        raise RuntimeError(f"{what}: expected one `-m {module} ... {name} {value}` below up, found {found}:\n{shown}")
    return found[0]


def find_hops(up_pid: int, status: dict) -> tuple[dict[str, int], dict[str, int]]:
    """The pid of every process on the path (by hop name), and the replicas' queue-proxy ports (by component)."""
    procs = command_lines(up_pid)
    service = next(s for s in status["services"] if s["name"] == MODEL)
    pids = {"gateway": _one(procs, "gateway", "-m", "gateway", "the gateway")}
    ports = {}
    for component, short in (("transformer", "trans"), ("predictor", "pred")):
        replicas = [r for revision in service["components"][component] for r in revision["replicas"]]
        if len(replicas) != 1 or not replicas[0]["ready"]:
            raise RuntimeError(f"the suite wants one ready {component} replica; /v1/status has {replicas}")
        port = _port(replicas[0]["http"])
        qp = pids[f"{short}-qp"] = _one(procs, "queue_proxy", "--port", port, f"the {component} queue-proxy")
        upstream = _port(flag(procs[qp], "--upstream"))
        pids[f"{short}-ms"] = _one(procs, "model_server", "--http-port", upstream, f"the {component} model server")
        ports[component] = int(port)
        if component == "predictor":
            ports["predictor-grpc"] = int(_port(replicas[0]["grpc"]) or 0)
    return pids, ports


def alone_args(replica_argv: list[str], http_port: int, grpc_port: int) -> list[str]:
    """The predictor replica's model-server flags (after ``-m model_server``) on other ports."""
    args = replica_argv[replica_argv.index("model_server") + 1 :]
    for name, port in (("--http-port", http_port), ("--grpc-port", grpc_port)):
        if name in args:
            args[args.index(name) + 1] = str(port)
    return args


@contextlib.contextmanager
def serving(work: Path) -> Iterator[Stack]:
    """``servelane up examples/`` and the standalone predictor, ready; then both stopped, ``up`` by SIGTERM, and
    whatever was left below it reported (in the stack's notes) and killed."""
    port, grpc_port, admin = free_port(), free_port(), free_port()
    up = ServiceProcess.servelane_up(
        ROOT / "examples", port=port, grpc_port=grpc_port, admin_port=admin, log_dir=work / "logs"
    ).start()
    notes: list[str] = []
    try:
        try:
            up.wait_output("servelane: ready in", READY_TIMEOUT)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"servelane up did not get ready: {exc}\n{_log_tails(work / 'logs')}") from None
        with urllib.request.urlopen(f"http://{HOST}:{admin}/v1/status", timeout=10) as response:
            pids, ports = find_hops(up.pid, json.loads(response.read()))
        with (
            standalone(command_lines(up.pid)[pids["pred-ms"]]) as (alone, alone_port, args),
            floor("bench.py_relay", ports["predictor"]) as (relay, relay_port),
            floor(
                "bench.py_lean_hop",
                ports["predictor"],
                PREDICTOR_HOST,
                "sklearn-iris-predictor-00001",
                host=PREDICTOR_HOST,
            ) as (lean, lean_port),
            second_gateway(flag(command_lines(up.pid)[pids["gateway"]], "--controller")) as (nofront, _, nofront_grpc),
        ):
            notes.append(f"predictor alone: python -m model_server {' '.join(args)}")
            pids |= {"alone": alone.pid, "relay": relay.pid, "lean": lean.pid, "nofront": nofront.pid}
            grpc_ports = {"gateway": grpc_port, "qp": ports["predictor-grpc"], "nofront": nofront_grpc}
            yield Stack(port, ports["predictor"], alone_port, relay_port, lean_port, grpc_ports, pids, notes)
    finally:
        below = up.descendants() if up.proc is not None and up.proc.poll() is None else []
        code = up.stop(STOP_TIMEOUT)
        left = [pid for pid in below if alive(pid)]
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        notes.append(
            f"servelane up stopped by SIGTERM (exit {code}); "
            + (f"LEFT BEHIND and killed: {left}" if left else f"none of its {len(below)} processes left")
        )


@contextlib.contextmanager
def floor(module: str, upstream: int, *args: str, host: str | None = None) -> Iterator[tuple[ServiceProcess, int]]:
    """A floor hop (:mod:`bench.py_relay`, :mod:`bench.py_lean_hop`) in front of ``upstream`` (the predictor
    replica's queue-proxy): in the gateway's place on the path, what a Python hop costs there. Ready once the
    predictor's health answers through it (with ``Host: host`` when it routes by host)."""
    port = free_port()
    hop = ServiceProcess(module, str(port), str(upstream), *args).start()
    try:
        hop.wait_http(f"http://{HOST}:{port}/v2/health/ready", timeout=30, host=host)
        yield hop, port
    finally:
        hop.stop()


@contextlib.contextmanager
def second_gateway(controller: str | None, source: Path = ROOT) -> Iterator[tuple[ServiceProcess, int, int]]:
    """A gateway without the gRPC front (``--no-grpc-authority``) following up's controller, run from the source
    tree ``source`` (:mod:`bench.ab_gateway` runs one from another revision); ready once it has the routing state.
    Its HTTP and gRPC ports."""
    if controller is None:
        raise RuntimeError("the gateway below up has no --controller flag")
    port, grpc_port, admin = free_port(), free_port(), free_port()
    ports = ("--port", str(port), "--grpc-port", str(grpc_port), "--admin-port", str(admin))
    flags = ("--controller", controller, *ports, "--metrics-port", str(free_port()), "--no-grpc-authority")
    gateway = ServiceProcess("gateway", *flags, cwd=source).start()
    try:
        gateway.wait_http(f"http://{HOST}:{admin}/readyz", timeout=30)
        yield gateway, port, grpc_port
    finally:
        gateway.stop()


@contextlib.contextmanager
def standalone(replica_argv: list[str]) -> Iterator[tuple[ServiceProcess, int, list[str]]]:
    http_port, grpc_port = free_port(), free_port()
    args = alone_args(replica_argv, http_port, grpc_port)
    server = ServiceProcess("model_server", *args).start()
    try:
        server.wait_http(f"http://{HOST}:{http_port}/v2/health/ready", timeout=60)
        yield server, http_port, args
    finally:
        server.stop()


def _log_tails(folder: Path, lines: int = 15) -> str:
    tails = []
    for log in sorted(folder.glob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        tails.append(f"--- {log.name}\n" + "\n".join(text))
    return "\n".join(tails)


# -- cases and ratios ------------------------------------------------------------------------------------------


def requests(stack: Stack) -> dict[str, HttpRequest]:
    """Each path's request: its address, and the Host header the gateway routes the predictor path by."""
    json_type = ("Content-Type", "application/json")
    url = f"/v1/models/{MODEL}:predict"
    return {
        "predictor": HttpRequest(f"http://{HOST}:{stack.alone_port}{url}", BODY, (json_type,)),
        "qp-predictor": HttpRequest(f"http://{HOST}:{stack.qp_port}{url}", BODY, (json_type,)),
        "relay-predictor": HttpRequest(f"http://{HOST}:{stack.relay_port}{url}", BODY, (json_type,)),
        "lean-predictor": by_predictor_host(stack.lean_port),
        "gateway-predictor": by_predictor_host(stack.gateway_port),
        "full": HttpRequest(f"http://{HOST}:{stack.gateway_port}{url}", BODY, (json_type,)),
    }


def by_predictor_host(port: int) -> HttpRequest:
    """The predictor path's request to a hop on ``port`` that routes by Host (the gateway, the lean floor)."""
    headers = (("Content-Type", "application/json"), ("Host", PREDICTOR_HOST))
    return HttpRequest(f"http://{HOST}:{port}/v1/models/{MODEL}:predict", BODY, headers)


def check(expected: list) -> Check:
    def run(body: bytes, headers: dict) -> None:
        if json.loads(body) != {"predictions": expected}:
            raise RuntimeError(f"probe: expected predictions {expected}, got {body[:300]!r}")

    return run


def grpc_requests(stack: Stack) -> dict[str, GrpcRequest]:
    """Each gRPC path's call: the iris tensor by model name, with the predictor's host as the gateway routes it."""
    x = np.asarray(json.loads(BODY)["instances"], dtype=np.float32)
    call = partial(grpc_infer, model=MODEL, name="input", x=x)
    return {
        "grpc-qp-predictor": call(f"{HOST}:{stack.grpc_ports['qp']}"),
        "grpc-gateway-predictor": replace(call(f"{HOST}:{stack.grpc_ports['gateway']}"), authority=PREDICTOR_HOST),
        "grpc-nofront-predictor": replace(
            call(f"{HOST}:{stack.grpc_ports['nofront']}"), metadata=(("x-servelane-host", PREDICTOR_HOST),)
        ),
    }


async def probe_classes(request: GrpcRequest) -> None:
    async with request.channel() as channel:
        raw = await channel.unary_unary(request.method)(request.payload, timeout=30, metadata=request.metadata or None)
    response = pb.ModelInferResponse.FromString(raw)
    names = [o.name for o in response.outputs]
    if "label" not in names:
        raise RuntimeError(f"probe gRPC {request.target}: no label output in {names}")
    labels = np.frombuffer(response.raw_output_contents[names.index("label")], dtype=np.int64).tolist()
    if labels != CLASSES:
        raise RuntimeError(f"probe gRPC {request.target}: labels {labels}, expected {CLASSES}")


def entry_pid(stack: Stack, path: str) -> int:
    entries = {"predictor": "alone", "qp-predictor": "pred-qp", "relay-predictor": "relay", "lean-predictor": "lean",
               "grpc-qp-predictor": "pred-qp", "grpc-nofront-predictor": "nofront"}  # fmt: skip
    return stack.pids[entries.get(path, "gateway")]


def build_cases(stack: Stack, options: Options, wrk: str | None) -> list[Case]:
    drives = {
        path: probed(
            http_driver(request, wrk), partial(probe_http, request, check(SPECIES if path == "full" else CLASSES))
        )
        for path, request in requests(stack).items()
    }
    drives |= {
        path: probed(grpc_driver(request), partial(probe_classes, request))
        for path, request in grpc_requests(stack).items()
    }
    cases = []
    for path, drive in drives.items():
        hops = {hop: stack.pids["alone" if path == "predictor" else hop] for hop in ON_PATH[path]}
        cases += [
            Case(path, c, drive, entry_pid(stack, path), hop_pids=hops)
            for c in CONCURRENCIES
            if options.selects(f"{path}@c{c}")
        ]
    order = {key: i for i, key in enumerate(KEYS)}
    return sorted(cases, key=lambda case: order[case.key])


def ratios(run: dict[str, Measurement]) -> list[Ratio]:
    """Issue 5's targets from one repeat; a ratio whose cases did not run is left out, one whose case failed n/a."""

    def get(key: str, what: str) -> float | None:
        m = run[key]
        return None if m.errors else m.hop_cpu_us.get(what) if what in HOPS else getattr(m, what)

    def diff(name: str, a: str, b: str, what: str, target: str = "") -> Ratio:
        x, y = get(a, what), get(b, what)
        return Ratio(name, None if x is None or y is None else x - y, target)

    def quotient(name: str, a: str, b: str, what: str) -> Ratio:
        x, y = get(a, what), get(b, what)
        return Ratio(name, None if x is None or not y else x / y)

    out = []
    for c in CONCURRENCIES:
        target = "<= 0.15" if c == 1 else ""
        pred, qp, relay, lean, gw, full = (f"{path}@c{c}" for path in PATHS)
        if {pred, qp} <= run.keys():
            out.append(diff(f"queue-proxy c{c}: added p50, qp-predictor - predictor, ms", qp, pred, "p50_ms", target))
        if {qp, gw} <= run.keys():
            out.append(diff(f"gateway c{c}: added p50, gateway-predictor - qp-predictor, ms", gw, qp, "p50_ms", target))
        if {qp, relay} <= run.keys():
            name = f"bare Python relay c{c}: added p50, relay-predictor - qp-predictor, ms"
            out.append(diff(name, relay, qp, "p50_ms"))
        if {qp, lean} <= run.keys():
            name = f"lean Python hop c{c}: added p50, lean-predictor - qp-predictor, ms"
            out.append(diff(name, lean, qp, "p50_ms"))
    for c in CONCURRENCIES:
        if f"gateway-predictor@c{c}" in run:
            out.append(
                Ratio(
                    f"gateway c{c}: CPU us/req (gateway-predictor)", get(f"gateway-predictor@c{c}", "gateway"), "<= 100"
                )
            )
        if f"qp-predictor@c{c}" in run:
            out.append(
                Ratio(
                    f"predictor queue-proxy c{c}: CPU us/req (qp-predictor)",
                    get(f"qp-predictor@c{c}", "pred-qp"),
                    "<= 100",
                )
            )
        if f"gateway-predictor@c{c}" in run:
            # the two proxy hops side by side in one chain: at c1 a hop runs its code with caches the other
            # processes (and this VM's neighbours) have emptied since its last request, so the longer the chain,
            # the more each hop costs; the queue-proxy's own number above is from a shorter chain than the gateway's
            gw_case = f"gateway-predictor@c{c}"
            out.append(Ratio(f"predictor queue-proxy c{c}: CPU us/req (gateway-predictor)", get(gw_case, "pred-qp")))
            gateway, queue_proxy = get(gw_case, "gateway"), get(gw_case, "pred-qp")
            out.append(
                Ratio(
                    f"gateway / predictor queue-proxy c{c}: CPU per request, both in gateway-predictor",
                    None if gateway is None or not queue_proxy else gateway / queue_proxy,
                )
            )
        # the floors for a Python hop in the gateway's place: bench.py_relay passes bytes, nothing more;
        # bench.py_lean_hop does the gateway's per-request work on raw bytes
        for floor_path, hop, what in (("relay-predictor", "relay", "bare Python relay"),
                                      ("lean-predictor", "lean", "lean Python hop")):  # fmt: skip
            if f"{floor_path}@c{c}" not in run:
                continue
            cost = get(f"{floor_path}@c{c}", hop)
            out.append(Ratio(f"{what} c{c}: CPU us/req ({floor_path})", cost))
            if f"gateway-predictor@c{c}" in run:
                gateway = get(f"gateway-predictor@c{c}", "gateway")
                out.append(
                    Ratio(
                        f"gateway / {what} c{c}: CPU per request, same place on the path",
                        None if gateway is None or not cost else gateway / cost,
                    )
                )
    for c in CONCURRENCIES:
        qp, front, nofront = (f"{path}@c{c}" for path in GRPC_PATHS)
        for case, hop, what in ((front, "gateway", "gateway with front"), (nofront, "nofront", "gateway, no front")):
            if {qp, case} <= run.keys():
                out.append(diff(f"gRPC {what} c{c}: added p50 over grpc-qp-predictor, ms", case, qp, "p50_ms"))
            if case in run:
                out.append(Ratio(f"gRPC {what} c{c}: CPU us/call", get(case, hop)))
        if {front, nofront} <= run.keys():
            out.append(diff(f"gRPC front c{c}: added p50, front - no front, ms", front, nofront, "p50_ms"))
            x, y = get(front, "gateway"), get(nofront, "nofront")
            out.append(
                Ratio(f"gRPC front c{c}: CPU us/call, front - no front", None if x is None or y is None else x - y)
            )
    for c in CONCURRENCIES:
        pred, full = f"predictor@c{c}", f"full@c{c}"
        if {pred, full} <= run.keys():
            out.append(quotient(f"full c{c}: p50 / predictor alone p50", full, pred, "p50_ms"))
            out.append(diff(f"full c{c}: added p50 over predictor alone, ms", full, pred, "p50_ms"))
            out.append(quotient(f"full c{c}: rps / predictor alone rps", full, pred, "rps"))
        if full in run:
            m = run[full]
            out.append(
                Ratio(
                    f"full c{c}: CPU us/req of every process on the path",
                    None if m.errors else sum(m.hop_cpu_us.values()),
                )
            )
    return out


# -- hop shares from Server-Timing -----------------------------------------------------------------------------


def parse_server_timing(value: str) -> dict[str, float]:
    """``a;dur=1.5, b;desc="x";dur=2`` -> {"a": 1.5, "b": 2.0}; a repeated name gets ``#2``, ``#3``, ..."""
    out: dict[str, float] = {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        name, *params = (p.strip() for p in entry.split(";"))
        dur = next((float(p.split("=", 1)[1]) for p in params if p.startswith("dur=")), None)
        if dur is None:
            continue
        key, n = name, 1
        while key in out:
            n += 1
            key = f"{name}#{n}"
        out[key] = dur
    return out


async def sample_timings(request: HttpRequest, expected: list, n: int) -> list[dict[str, float]]:
    """``n`` sequential requests on one keep-alive connection: each answer's Server-Timing entries (ms), and
    ``client``, the time this client waited for the whole answer."""
    headers = {**dict(request.headers), "Accept-Encoding": "identity"}
    checked = check(expected)
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), auto_decompress=False) as session:
        for _ in range(n):
            started = time.perf_counter()
            async with session.post(request.url, data=request.body, headers=headers) as response:
                body = await response.read()
            client = (time.perf_counter() - started) * 1000
            if response.status != 200:
                raise RuntimeError(f"{request.url}: HTTP {response.status} {body[:300]!r}")
            checked(body, dict(response.headers))
            entries = parse_server_timing(", ".join(response.headers.getall("Server-Timing", [])))
            out.append({**entries, "client": client})
    return out


MODEL_TIME = ("preprocess", "predict", "postprocess")
SHARES = (  # (name, entries added, entries taken away): computed per request, then the median
    ("outside the gateway (client, loopback)", ("client",), ("gateway",)),
    ("gateway's own", ("gateway",), ("queue-proxy",)),
    ("queue-proxy's own + model server's HTTP", ("queue-proxy",), MODEL_TIME),
    ("model (preprocess + predict + postprocess)", MODEL_TIME, ()),
)


def shares(samples: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for name, plus, minus in SHARES:
        values = [
            sum(s[k] for k in plus) - sum(s[k] for k in minus) for s in samples if all(k in s for k in (*plus, *minus))
        ]
        if values:
            out[name] = statistics.median(values)
    return out


def medians(samples: list[dict[str, float]]) -> dict[str, float]:
    names = dict.fromkeys(name for s in samples for name in s)
    return {name: statistics.median(s[name] for s in samples if name in s) for name in names}


async def timing_notes(stack: Stack, n: int = TIMING_REQUESTS) -> list[str]:
    reqs = requests(stack)
    notes = [f"Server-Timing: {n} sequential requests per path after the load, medians in ms"]
    seen: dict[str, dict[str, float]] = {}
    for path, expected in (("gateway-predictor", CLASSES), ("full", SPECIES)):
        try:
            samples = await sample_timings(reqs[path], expected, n)
        except (aiohttp.ClientError, RuntimeError, ValueError) as exc:
            notes.append(f"  {path}: failed: {type(exc).__name__}: {exc}")
            continue
        seen[path] = medians(samples)
        notes.append(f"  {path} entries: " + ", ".join(f"{k} {v:.3f}" for k, v in seen[path].items()))
        notes.append(f"  {path} shares: " + ", ".join(f"{k} {v:.3f}" for k, v in shares(samples).items()))
    inner, full = seen.get("gateway-predictor", {}), seen.get("full", {})
    if "predict" in full and "client" in inner:
        notes.append(
            f"  full: the transformer's predict (its call through gateway -> queue-proxy -> predictor) "
            f"{full['predict']:.3f} vs {inner['client']:.3f} for this client on gateway-predictor"
        )
    return notes


async def run(options: Options, wrk: str | None) -> SuiteResult:
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        with serving(Path(tmp)) as stack:
            result = await run_suite("stack", build_cases(stack, options, wrk), options, ratios)
            result.notes += await timing_notes(stack)
        result.notes += stack.notes  # the stop's line lands there once `up` has stopped
        if wrk is None:
            result.notes.append("load: the Python generator (no wrk); it shares the CPU and bounds rps")
        return result
