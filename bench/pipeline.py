"""The pipeline suite (issue 4): dynamic batching on the MLP, and the transformer hop in front of iris.

Cases (``<name>@c<concurrency>``):
* ``mlp-batch-off`` / ``mlp-batch-on``: the 512-2048-2048-1000 MLP, batch-1 V2 binary requests at 16 and 64, served
  by one model server as two models, ``mlp`` and ``mlp-batched`` (``dynamic_batching``: up to 64 rows, no
  queue delay, so batches form from what queues while the model computes the previous one);
* ``floor-mlp-b16`` / ``floor-mlp-b64``: onnxruntime in-process on 16 and 64 rows, the same session options;
* ``mlp-1core-batch-on`` / ``-gil200`` and ``floor-mlp-1core-b64``: the batched MLP with one onnxruntime thread
  (``intra_op_threads: 1``), so the model has a core to itself and the event loop and wrk share the other: the
  serving overhead when it does not compete with the model for CPU. Two servers, one with Python's GIL switch
  interval and one with ``--gil-switch-interval-us 200``, against the in-process floor on one thread;
* ``iris-predictor-v1``: V1 rows straight to the iris predictor;
* ``iris-transformer-rest`` / ``-grpc``: V1 named features to examples/iris_transformer.py, which calls that
  predictor over V2 REST (binary) or gRPC. Server CPU is the transformer's; the predictor's is the upstream's.

Targets: batching on at c64 at least 3x the rps of batching off, and at least 80% of in-process onnxruntime's
rows per second at batch 64; the transformer adds at most 1 ms to the predictor's p50 at c1. The one-core cases
are for information.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from bench import model_server as ms
from bench import models
from bench.floor import floor_load
from bench.harness import Case, Measurement, Options, Ratio, SuiteResult, probed, run_suite
from bench.loadgen import HttpRequest, http_driver
from tests.harness import ROOT, ServiceProcess, free_port

HOST = "127.0.0.1"
BATCH_ROWS = 64
BATCHED = f"dynamic_batching:\n  max_batch_rows: {BATCH_ROWS}\n  max_queue_delay_us: 0\n"
ONE_CORE = "intra_op_threads: 1\n" + BATCHED
GIL_US = 200
TRANSFORMER = str(ROOT / "examples" / "iris_transformer.py") + ":IrisTransformer"
NAMED = {"sepal_length": 6.8, "sepal_width": 2.8, "petal_length": 4.8, "petal_width": 1.4}

SPEC = (  # (case, concurrencies)
    ("mlp-batch-off", (16, 64)),
    ("mlp-batch-on", (16, 64)),
    ("floor-mlp-b16", (1,)),
    ("floor-mlp-b64", (1,)),
    ("mlp-1core-batch-on", (64,)),
    ("mlp-1core-batch-on-gil200", (64,)),
    ("floor-mlp-1core-b64", (1,)),
    ("iris-predictor-v1", (1,)),
    ("iris-transformer-rest", (1,)),
    ("iris-transformer-grpc", (1,)),
)
KEYS = [f"{name}@c{c}" for name, concurrencies in SPEC for c in concurrencies]


@contextlib.contextmanager
def serving(*args: str) -> Iterator[tuple[ServiceProcess, int, int]]:
    http_port, grpc_port = free_port(), free_port()
    server = ServiceProcess("model_server", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                            "--log-level", "WARNING", *args).start()
    try:
        server.wait_http(f"http://{HOST}:{http_port}/v2/health/ready", timeout=60)
        yield server, http_port, grpc_port
    finally:
        server.stop()


def check_v1(expected: list) -> ms.Check:
    def check(body: bytes, headers: dict) -> None:
        if json.loads(body) != {"predictions": expected}:
            raise RuntimeError(f"probe: expected predictions {expected}, got {body[:300]!r}")
    return check


def _selected(options: Options, *names: str) -> list[str]:
    return [n for n, cs in SPEC if n in names and any(options.selects(f"{n}@c{c}") for c in cs)]


def _cases(name: str, request: HttpRequest, check: ms.Check, pid: int, options: Options, wrk: str | None,
           upstream_pid: int | None = None) -> list[Case]:
    drive = probed(http_driver(request, wrk), partial(ms.probe_http, request, check))
    concurrencies = dict(SPEC)[name]
    return [Case(name, c, drive, pid, upstream_pid) for c in concurrencies if options.selects(f"{name}@c{c}")]


def mlp_cases(stack: contextlib.ExitStack, work: Path, options: Options, wrk: str | None) -> list[Case]:
    cases: list[Case] = []
    x = ms.inputs()["mlp"][1]
    for name in _selected(options, "floor-mlp-b16", "floor-mlp-b64", "floor-mlp-1core-b64"):
        rows = 16 if name.endswith("b16") else 64
        npz = work / f"mlp-{rows}.npz"
        np.savez(npz, x=np.repeat(x, rows, axis=0))
        model = work / "repo" / "mlp" / "1" / "model.onnx"
        threads = 1 if "1core" in name else 0
        cases.append(Case(name, 1, partial(_floor, model, npz, options.warmup, threads), None))
    served = _selected(options, "mlp-batch-off", "mlp-batch-on")
    if served:
        server, http_port, _ = stack.enter_context(serving("--model-repository", str(work / "repo")))
        base = f"http://{HOST}:{http_port}"
        for name in served:
            model = "mlp-batched" if name == "mlp-batch-on" else "mlp"
            cases += _cases(name, ms.v2_binary(base, model, "x", x), ms.check_binary("mlp"), server.pid, options, wrk)
    for name in _selected(options, "mlp-1core-batch-on", "mlp-1core-batch-on-gil200"):
        flags = ("--gil-switch-interval-us", str(GIL_US)) if name.endswith("gil200") else ()
        server, http_port, _ = stack.enter_context(serving("--model-repository", str(work / "repo-1core"), *flags))
        request = ms.v2_binary(f"http://{HOST}:{http_port}", "mlp", "x", x)
        cases += _cases(name, request, ms.check_binary("mlp"), server.pid, options, wrk)
    return cases


async def _floor(model: Path, npz: Path, warmup: float, threads: int, concurrency: int, duration: float):
    return await floor_load(model, npz, duration, warmup, threads)


def iris_cases(stack: contextlib.ExitStack, options: Options, wrk: str | None) -> list[Case]:
    names = _selected(options, "iris-predictor-v1", "iris-transformer-rest", "iris-transformer-grpc")
    if not names:
        return []
    predictor, p_http, p_grpc = stack.enter_context(serving("--model-repository", str(ROOT / "examples" / "models")))
    cases: list[Case] = []
    if "iris-predictor-v1" in names:
        request = ms.v1_json(f"http://{HOST}:{p_http}", "sklearn-iris", ms.inputs()["sklearn-iris"][1])
        cases += _cases("iris-predictor-v1", request, check_v1([1]), predictor.pid, options, wrk)
    for name, protocol, port in (("iris-transformer-rest", "v2", p_http), ("iris-transformer-grpc", "grpc-v2", p_grpc)):
        if name not in names:
            continue
        transformer, t_http, _ = stack.enter_context(serving(
            "--model-class", TRANSFORMER, "--model-name", "sklearn-iris", "--predictor-host", f"{HOST}:{port}",
            "--predictor-protocol", protocol))
        request = HttpRequest(f"http://{HOST}:{t_http}/v1/models/sklearn-iris:predict",
                              json.dumps({"instances": [NAMED]}).encode(), (("Content-Type", "application/json"),))
        cases += _cases(name, request, check_v1(["versicolor"]), transformer.pid, options, wrk, predictor.pid)
    return cases


async def run(options: Options, wrk: str | None) -> SuiteResult:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        models.build_mlp(work / "repo" / "mlp" / "1" / "model.onnx")
        models.build_mlp(work / "repo" / "mlp-batched" / "1" / "model.onnx")
        (work / "repo" / "mlp-batched" / "config.yaml").write_text(BATCHED)
        models.build_mlp(work / "repo-1core" / "mlp" / "1" / "model.onnx")
        (work / "repo-1core" / "mlp" / "config.yaml").write_text(ONE_CORE)
        cases = mlp_cases(stack, work, options, wrk) + iris_cases(stack, options, wrk)
        order = {key: i for i, key in enumerate(KEYS)}
        cases.sort(key=lambda case: order[case.key])
        return await run_suite("pipeline", cases, options, ratios)


def ratios(run: dict[str, Measurement]) -> list[Ratio]:
    """Issue 4's targets, from one repeat; a ratio whose cases did not run (or failed) is left out (or n/a)."""

    def field(key: str, name: str, scale: float = 1.0) -> float | None:
        m = run.get(key)
        return None if m is None or m.errors else getattr(m, name) * scale

    def ratio(name: str, num: float | None, den: float | None, target: str = "") -> Ratio:
        return Ratio(name, None if num is None or not den else num / den, target)

    def diff(name: str, a: float | None, b: float | None, target: str = "") -> Ratio:
        return Ratio(name, None if a is None or b is None else a - b, target)

    wanted = {
        "on/off c64": ("mlp-batch-on@c64", "mlp-batch-off@c64"),
        "on/off c16": ("mlp-batch-on@c16", "mlp-batch-off@c16"),
        "floor c64": ("mlp-batch-on@c64", "floor-mlp-b64@c1"),
        "floor c16": ("mlp-batch-on@c16", "floor-mlp-b16@c1"),
        "1core": ("mlp-1core-batch-on@c64", "floor-mlp-1core-b64@c1"),
        "1core gil": ("mlp-1core-batch-on-gil200@c64", "floor-mlp-1core-b64@c1"),
        "gil": ("mlp-1core-batch-on-gil200@c64", "mlp-1core-batch-on@c64"),
        "rest hop": ("iris-transformer-rest@c1", "iris-predictor-v1@c1"),
        "grpc hop": ("iris-transformer-grpc@c1", "iris-predictor-v1@c1"),
    }
    ran = {label for label, keys in wanted.items() if all(k in run for k in keys)}
    out = []
    if "on/off c64" in ran:
        out.append(ratio("mlp c64: rps batching on / off", field("mlp-batch-on@c64", "rps"),
                         field("mlp-batch-off@c64", "rps"), ">= 3"))
    if "on/off c16" in ran:
        out.append(ratio("mlp c16: rps batching on / off", field("mlp-batch-on@c16", "rps"),
                         field("mlp-batch-off@c16", "rps")))
    if "floor c64" in ran:
        out.append(ratio("mlp c64 batching on: rows/s / in-process rows/s at batch 64",
                         field("mlp-batch-on@c64", "rps"), field("floor-mlp-b64@c1", "rps", 64), ">= 0.8"))
    if "floor c16" in ran:
        out.append(ratio("mlp c16 batching on: rows/s / in-process rows/s at batch 16",
                         field("mlp-batch-on@c16", "rps"), field("floor-mlp-b16@c1", "rps", 16)))
    for label, key in (("1core", "mlp-1core-batch-on@c64"), ("1core gil", "mlp-1core-batch-on-gil200@c64")):
        if label in ran:
            out.append(ratio(f"{key.split('@')[0]} c64: rows/s / in-process rows/s at batch 64 on one thread",
                             field(key, "rps"), field("floor-mlp-1core-b64@c1", "rps", 64)))
    if "gil" in ran:
        out.append(ratio(f"mlp-1core c64: rps with --gil-switch-interval-us {GIL_US} / Python's 5 ms",
                         field("mlp-1core-batch-on-gil200@c64", "rps"), field("mlp-1core-batch-on@c64", "rps")))
    for label, key in (("rest hop", "iris-transformer-rest@c1"), ("grpc hop", "iris-transformer-grpc@c1")):
        if label in ran:
            out.append(diff(f"iris c1: p50 ms {key.split('@')[0]} - predictor alone", field(key, "p50_ms"),
                            field("iris-predictor-v1@c1", "p50_ms"), "<= 1"))
    return out
