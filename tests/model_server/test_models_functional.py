"""Model-level behaviour over real clients: iris on gRPC, FP16/BF16 over binary REST and gRPC, io_binding on the
CPU, inline versus pooled calls, and a failing model's 500 without a traceback."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from model_server.app import ModelServer
from model_server.config import ModelServerConfig
from model_server.model import CallCost, Model
from model_server.repository import ModelRepository
from tests.models import build_add, build_half, build_identity_multi

IRIS = np.array([[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]], dtype=np.float32)
HALF = np.array([[1.5, -2.0], [0.25, 8.0]], dtype=np.float16)
BF16_VALUES = np.array([[1.5, -2.0], [0.25, 8.0]], dtype=np.float32)  # exactly representable in bfloat16
BF16_BITS = (BF16_VALUES.view(np.uint32) >> 16).astype(np.uint16)


@pytest.fixture
def repository(tmp_path: Path, iris_repository: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(iris_repository / "sklearn-iris", root / "sklearn-iris")
    build_half(root / "half" / "1" / "model.onnx")
    build_add(root / "bound" / "1" / "model.onnx", 1.0)
    (root / "bound" / "config.yaml").write_text("io_binding: true\ninline_max_us: 0\n")
    build_identity_multi(root / "strings" / "1" / "model.onnx")
    (root / "strings" / "config.yaml").write_text("io_binding: true\n")
    return root



async def test_iris_over_tritonclient_grpc(server):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        x = grpcclient.InferInput("input", [2, 4], "FP32")
        x.set_data_from_numpy(IRIS)
        result = await client.infer("sklearn-iris", [x], request_id="g1")
        assert result.as_numpy("label").tolist() == [1, 1]
        assert result.as_numpy("probabilities").shape == (2, 3)
        assert result.get_response().id == "g1"
    finally:
        await client.close()


async def test_fp16_and_bf16_over_grpc(server):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        h = grpcclient.InferInput("h", [2, 2], "FP16")
        h.set_data_from_numpy(HALF)
        b = grpcclient.InferInput("b", [2, 2], "BF16")
        b.set_data_from_numpy(BF16_VALUES)  # tritonclient converts float32 to bfloat16 bits
        result = await client.infer("half", [h, b])
        np.testing.assert_array_equal(result.as_numpy("h2"), HALF * 2)
        np.testing.assert_array_equal(result.as_numpy("bf"), BF16_VALUES)
    finally:
        await client.close()


def fp16_over_binary_rest(url: str) -> None:
    client = httpclient.InferenceServerClient(url)
    try:
        h = httpclient.InferInput("h", [2, 2], "FP16")
        h.set_data_from_numpy(HALF)
        b = httpclient.InferInput("b", [2, 2], "BF16")
        b.set_data_from_numpy(BF16_VALUES)
        result = client.infer("half", [h, b])
        np.testing.assert_array_equal(result.as_numpy("h2"), HALF * 2)
        np.testing.assert_array_equal(result.as_numpy("bf"), BF16_VALUES)
        h.set_data_from_numpy(HALF, binary_data=False)
        with pytest.raises(InferenceServerException, match="FP16 data via JSON is not supported") as raised:
            client.infer("half", [h, b])
        assert raised.value.status() == "400"
    finally:
        client.close()


async def test_fp16_and_bf16_over_binary_rest(server):
    await asyncio.to_thread(fp16_over_binary_rest, f"127.0.0.1:{server.http_port}")


async def test_io_binding_path_on_cpu(server):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": list(range(8))}]}
        for _ in range(3):
            async with http.post("/v2/models/bound/infer", json=body) as response:
                assert response.status == 200
                assert (await response.json())["outputs"][0]["data"] == [float(v + 1) for v in range(8)]
    model = server.repository.get("bound")
    assert model._io_binding is True
    assert model._cost.per_row is None  # inline_max_us: 0 -> every call went to the pool


async def test_io_binding_stays_off_for_a_model_with_string_tensors(server):
    """onnxruntime binds no string tensor (on a GPU every call with one failed before this was checked at load)."""
    body = {"inputs": [
        {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
        {"name": "b", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]},
        {"name": "c", "shape": [1, 3], "datatype": "BOOL", "data": [True, False, True]},
        {"name": "s", "shape": [1, 1], "datatype": "BYTES", "data": ["hi"]},
    ]}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        async with http.post("/v2/models/strings/infer", json=body) as response:
            assert response.status == 200, await response.text()
            outputs = {o["name"]: o["data"] for o in (await response.json())["outputs"]}
    assert outputs["s_out"] == ["hi"] and outputs["a2"] == [2.0, 4.0, 6.0]
    assert server.repository.get("strings")._io_binding is False


async def test_fast_model_calls_move_inline_after_a_measured_window(server):
    model = server.repository.get("sklearn-iris")
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        for _ in range(CallCost.WINDOW + 1):
            async with http.post("/v1/models/sklearn-iris:predict", json={"instances": IRIS.tolist()}) as response:
                assert (await response.json()) == {"predictions": [1, 1]}
    assert model._cost.per_row is not None
    assert model._cost.inline(rows=2)
    assert not model._cost.inline(rows=10_000_000)  # a huge batch would block the loop: it goes to the pool


def test_call_cost_ignores_outliers():
    cost = CallCost(inline_max=100e-6)
    assert not cost.inline(1)
    for i in range(CallCost.WINDOW):
        cost.observe(0.050 if i % 8 == 0 else 10e-6, 1)  # one call in eight is slow
    assert cost.inline(1)
    for _ in range(CallCost.WINDOW):
        cost.observe(500e-6, 1)
    assert not cost.inline(1)


class Exploding(Model):
    async def predict(self, payload, context):
        raise RuntimeError("secret internal detail at /srv/model.py line 3")


async def test_unexpected_model_error_is_500_without_details(caplog):
    repository = ModelRepository()
    model = Exploding("boom")
    model.load()
    repository.register(model)
    server = ModelServer(ModelServerConfig(model_name="boom", model_path=Path("unused"), http_port=0, grpc_port=-1),
                         repository)
    await server.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
            async with http.post("/v1/models/boom:predict", json={"instances": [[1]]}) as response:
                assert response.status == 500
                assert await response.json() == {"error": "Internal server error"}
    finally:
        await server.stop()
    assert "secret internal detail" in caplog.text  # logged for the operator, with its traceback
    assert "Traceback" in caplog.text
