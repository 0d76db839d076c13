"""The model-server suite: iris over every protocol, a float MLP, a 4 MiB tensor, and onnxruntime in-process.

Cases (``<name>@c<concurrency>``): iris over V1 JSON, V2 JSON, V2 binary and gRPC at 1 and 16; the
512-2048-2048-1000 MLP with batch-1 requests at 16 over V2 binary and gRPC; a 1M-float (4 MiB) tensor through an
Identity model over V2 binary and gRPC at 1; and ``floor-*``, the same inputs through onnxruntime in-process.
One server (``python -m model_server``) serves every case; each case's answer is checked by one probe
request before its first load phase.
The ratios are issue 2's targets: iris V2 JSON at 16 against KServe 0.21 (1,400 rps, 740 us of CPU per request),
4 MiB binary REST within 2x of gRPC, and the server against the in-process floor.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import aiohttp
import numpy as np

from bench import models
from bench.floor import floor_load
from bench.harness import Case, Measurement, Options, Ratio, SuiteResult, probed, run_suite
from bench.loadgen import GrpcRequest, HttpRequest, Load, grpc_driver, http_driver
from model_server.grpc_gen import inference_pb2 as pb
from tests.harness import ServiceProcess, free_port

HOST = "127.0.0.1"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
KSERVE_RPS, KSERVE_CPU_US = 1400.0, 740.0  # KServe 0.21's Python server, iris V2 JSON at 16 (issue 2)
IRIS_ROW = [6.8, 2.8, 4.8, 1.4]
OUTPUT_BYTES = {"sklearn-iris": 8 + 3 * 4, "mlp": 1000 * 4, "identity-4m": models.BIG_ELEMENTS * 4}


def inputs() -> dict[str, tuple[str, np.ndarray]]:
    """model -> (input name, the one batch-1 input every case of that model sends)."""
    rng = np.random.default_rng(1)
    return {
        "sklearn-iris": ("input", np.array([IRIS_ROW], np.float32)),
        "mlp": ("x", rng.standard_normal((1, models.MLP_LAYERS[0]), dtype=np.float32)),
        "identity-4m": ("x", rng.standard_normal((1, models.BIG_ELEMENTS), dtype=np.float32)),
    }


# -- requests --------------------------------------------------------------------------------------------------

def _rows(model: str, x: np.ndarray) -> list:
    # iris as the short literals a client writes, not float32's 6.800000190734863
    return [IRIS_ROW] if model == "sklearn-iris" else x.tolist()


def v1_json(base: str, model: str, x: np.ndarray) -> HttpRequest:
    return HttpRequest(f"{base}/v1/models/{model}:predict", json.dumps({"instances": _rows(model, x)}).encode(),
                       (("Content-Type", "application/json"),))


def v2_json(base: str, model: str, name: str, x: np.ndarray) -> HttpRequest:
    data = np.ravel(_rows(model, x)).tolist()
    body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": data}]}
    return HttpRequest(f"{base}/v2/models/{model}/infer", json.dumps(body).encode(),
                       (("Content-Type", "application/json"),))


def v2_binary(base: str, model: str, name: str, x: np.ndarray) -> HttpRequest:
    raw = x.tobytes()
    header = json.dumps({
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    return HttpRequest(f"{base}/v2/models/{model}/infer", header + raw,
                       (("Inference-Header-Content-Length", str(len(header))),
                        ("Content-Type", "application/octet-stream")))


def grpc_infer(target: str, model: str, name: str, x: np.ndarray) -> GrpcRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=list(x.shape))
    message = pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[x.tobytes()])
    return GrpcRequest(target, MODEL_INFER, message.SerializeToString())


# -- probes: one checked request per case, so a fast error path is never what gets measured ---------------------

Check = Callable[[bytes, dict], None]


async def probe_http(request: HttpRequest, check: Check) -> None:
    headers = {**dict(request.headers), "Accept-Encoding": "identity"}
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(request.url, data=request.body, headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"probe {request.url}: HTTP {response.status} {body[:300]!r}")
            check(body, dict(response.headers))


async def probe_grpc(request: GrpcRequest, model: str) -> None:
    async with request.channel() as channel:
        raw = await channel.unary_unary(request.method)(request.payload, timeout=30, metadata=request.metadata or None)
    size = sum(len(c) for c in pb.ModelInferResponse.FromString(raw).raw_output_contents)
    if size != OUTPUT_BYTES[model]:
        raise RuntimeError(f"probe gRPC {model}: {size} output bytes, expected {OUTPUT_BYTES[model]}")


def check_v1(body: bytes, headers: dict) -> None:
    if len(json.loads(body)["predictions"]) != 1:
        raise RuntimeError(f"probe V1: unexpected body {body[:300]!r}")


def check_v2_json(body: bytes, headers: dict) -> None:
    if not json.loads(body)["outputs"]:
        raise RuntimeError(f"probe V2 JSON: no outputs in {body[:300]!r}")


def check_binary(model: str) -> Check:
    def check(body: bytes, headers: dict) -> None:
        length = int(headers.get("Inference-Header-Content-Length", -1))
        if length < 0 or len(body) - length != OUTPUT_BYTES[model]:
            raise RuntimeError(f"probe V2 binary {model}: header length {length}, body {len(body)} bytes")
    return check


# -- the suite -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def serving(repository: Path) -> Iterator[tuple[ServiceProcess, int, int]]:
    http_port, grpc_port = free_port(), free_port()
    server = ServiceProcess("model_server", "--model-repository", str(repository), "--http-port", str(http_port),
                            "--grpc-port", str(grpc_port), "--log-level", "WARNING").start()
    try:
        server.wait_http(f"http://{HOST}:{http_port}/v2/health/ready", timeout=60)
        yield server, http_port, grpc_port
    finally:
        server.stop()


# (case name, model, protocol, concurrencies): the whole list of cases, in the order they run
SPEC = (
    ("iris-v1", "sklearn-iris", "v1", (1, 16)),
    ("iris-v2-json", "sklearn-iris", "v2-json", (1, 16)),
    ("iris-v2-binary", "sklearn-iris", "v2-binary", (1, 16)),
    ("iris-grpc", "sklearn-iris", "grpc", (1, 16)),
    ("mlp-v2-binary", "mlp", "v2-binary", (16,)),
    ("mlp-grpc", "mlp", "grpc", (16,)),
    ("4mb-v2-binary", "identity-4m", "v2-binary", (1,)),
    ("4mb-grpc", "identity-4m", "grpc", (1,)),
    ("floor-iris", "sklearn-iris", "in-process", (1,)),
    ("floor-mlp", "mlp", "in-process", (1,)),
    ("floor-4mb", "identity-4m", "in-process", (1,)),
)
KEYS = [f"{name}@c{c}" for name, _, _, concurrencies in SPEC for c in concurrencies]


def build_cases(server: ServiceProcess, http_port: int, grpc_port: int, work: Path, options: Options,
                wrk: str | None) -> list[Case]:
    """The selected cases; each checks its first answer with a probe (see :func:`bench.harness.probed`)."""
    base, target = f"http://{HOST}:{http_port}", f"{HOST}:{grpc_port}"
    data = inputs()
    cases: list[Case] = []
    for name, model, protocol, concurrencies in SPEC:
        concurrencies = tuple(c for c in concurrencies if options.selects(f"{name}@c{c}"))
        if not concurrencies:
            continue
        input_name, x = data[model]
        if protocol == "in-process":
            npz = work / f"{model}.npz"
            np.savez(npz, **{input_name: x})
            drive = _floor(work / "repo" / model / "1" / "model.onnx", npz, options.warmup)
            cases.append(Case(name, 1, drive, None))
            continue
        if protocol == "grpc":
            request = grpc_infer(target, model, input_name, x)
            drive = probed(grpc_driver(request), partial(probe_grpc, request, model))
        else:
            request, check = http_request(protocol, base, model, input_name, x)
            drive = probed(http_driver(request, wrk), partial(probe_http, request, check))
        cases.extend(Case(name, c, drive, server.pid) for c in concurrencies)
    return cases


def http_request(protocol: str, base: str, model: str, input_name: str, x: np.ndarray) -> tuple[HttpRequest, Check]:
    if protocol == "v1":
        return v1_json(base, model, x), check_v1
    if protocol == "v2-json":
        return v2_json(base, model, input_name, x), check_v2_json
    return v2_binary(base, model, input_name, x), check_binary(model)


def _floor(model: Path, npz: Path, warmup: float) -> Callable[[int, float], Awaitable[Load]]:
    return lambda concurrency, duration: floor_load(model, npz, duration, warmup)


async def run(options: Options, wrk: str | None) -> SuiteResult:
    with tempfile.TemporaryDirectory(prefix="bench-model-server-") as tmp:
        work = Path(tmp)
        models.build_repository(work / "repo")
        with serving(work / "repo") as (server, http_port, grpc_port):
            cases = build_cases(server, http_port, grpc_port, work, options, wrk)
            return await run_suite("model_server", cases, options, ratios)


J16 = "iris-v2-json@c16"
# (name, numerator, denominator or None, target): a term is a (case key, Measurement field) or a constant
RATIOS = (
    ("iris V2 JSON c16: rps", (J16, "rps"), None, f">= {4 * KSERVE_RPS:.0f}"),
    ("iris V2 JSON c16: rps / KServe 0.21 (1,400 rps)", (J16, "rps"), KSERVE_RPS, ">= 4"),
    ("iris V2 JSON c16: server CPU us/req", (J16, "server_cpu_us"), None, "<= 150"),
    ("iris V2 JSON c16: KServe 0.21 CPU/req (740 us) / ours", KSERVE_CPU_US, (J16, "server_cpu_us"), ">= 4"),
    ("4 MiB: binary REST p50 / gRPC p50", ("4mb-v2-binary@c1", "p50_ms"), ("4mb-grpc@c1", "p50_ms"), "<= 2"),
    ("4 MiB: gRPC rps / binary REST rps", ("4mb-grpc@c1", "rps"), ("4mb-v2-binary@c1", "rps"), ""),
    ("iris: server CPU/req (V2 JSON c16) / in-process CPU/inf", (J16, "server_cpu_us"),
     ("floor-iris@c1", "server_cpu_us"), ""),
    ("iris: server p50 (V2 binary c1) / in-process p50", ("iris-v2-binary@c1", "p50_ms"),
     ("floor-iris@c1", "p50_ms"), ""),
    ("iris: server p50 (gRPC c1) / in-process p50", ("iris-grpc@c1", "p50_ms"), ("floor-iris@c1", "p50_ms"), ""),
    ("mlp: server rps (V2 binary c16) / in-process rps", ("mlp-v2-binary@c16", "rps"), ("floor-mlp@c1", "rps"), ""),
    ("mlp: server CPU/req (V2 binary c16) / in-process CPU/inf", ("mlp-v2-binary@c16", "server_cpu_us"),
     ("floor-mlp@c1", "server_cpu_us"), ""),
    ("4 MiB: server p50 (binary REST c1) / in-process p50", ("4mb-v2-binary@c1", "p50_ms"),
     ("floor-4mb@c1", "p50_ms"), ""),
)


def ratios(run: dict[str, Measurement]) -> list[Ratio]:
    """The :data:`RATIOS` whose cases ran, from one repeat; a case with errors makes its ratios n/a."""
    out = []
    for name, numerator, denominator, target in RATIOS:
        terms = [t for t in (numerator, denominator) if isinstance(t, tuple)]
        if any(key not in run for key, _ in terms):
            continue
        num, den = _term(run, numerator), 1.0 if denominator is None else _term(run, denominator)
        value = None if num is None or den is None or den == 0 else num / den
        out.append(Ratio(name, value, target))
    return out


def _term(run: dict[str, Measurement], term: tuple[str, str] | float) -> float | None:
    if not isinstance(term, tuple):
        return term
    m = run[term[0]]
    return None if m.errors else getattr(m, term[1])
