"""The CUDA path of the onnxruntime model, on a real GPU: skipped where onnxruntime has no usable CUDA provider.

CI has no GPU, so these run on a GPU machine (``pytest tests/model_server/test_cuda_functional.py``). What they
prove there: the default providers put CUDA first and the session really uses it (``get_providers()``, shown in
metadata); io_binding is on; answers over REST (JSON and binary) and gRPC match a numpy reference; dynamic
batching on the GPU hands each concurrent caller its own rows; FP16 tensors run on the GPU.
"""

from __future__ import annotations

import asyncio
import struct

import aiohttp
import grpc
import numpy as np
import pytest

from model_server.onnx_model import CUDA, default_providers
from tests.models import build_dense, build_half

pytestmark = pytest.mark.skipif(
    CUDA not in [spec.name for spec in default_providers()], reason="no CUDA provider or driver on this host"
)


@pytest.fixture
def dense_repository(tmp_path):
    _, w, b = build_dense(tmp_path / "dense" / "1" / "model.onnx", inputs=256, outputs=128)
    build_dense(tmp_path / "dense_batched" / "1" / "model.onnx", inputs=256, outputs=128)
    (tmp_path / "dense_batched" / "config.yaml").write_text(
        "dynamic_batching: {max_batch_rows: 64, max_queue_delay_us: 2000}\n"
    )
    build_half(tmp_path / "half" / "1" / "model.onnx")
    return tmp_path, w, b


def _answer(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(x @ w + b, 0)


async def test_cuda_is_the_provider_in_use_and_answers_match(start_model_server, dense_repository):
    root, w, b = dense_repository
    server = await start_model_server(root)
    model = server.repository.get("dense")
    assert model.providers[0] == CUDA and model._io_binding
    x = np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        async with http.get("/v2/models/dense") as response:
            meta = await response.json()
        assert meta["parameters"]["execution_providers"][0] == CUDA
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [8, 256], "data": x.ravel().tolist()}]}
        async with http.post("/v2/models/dense/infer", json=body) as response:
            assert response.status == 200, await response.text()
            out = (await response.json())["outputs"][0]
        y = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
        np.testing.assert_allclose(y, _answer(x, w, b), rtol=2e-3, atol=2e-3)

        header = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[8,256],"parameters":{"binary_data_size":8192}}],'
        header += b'"outputs":[{"name":"y","parameters":{"binary_data":true}}]}'
        headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
        async with http.post("/v2/models/dense/infer", data=header + x.tobytes(), headers=headers) as response:
            assert response.status == 200, await response.text()
            raw = await response.read()
            length = int(response.headers["Inference-Header-Content-Length"])
        y = np.frombuffer(raw[length:], dtype=np.float32).reshape(8, 128)
        np.testing.assert_allclose(y, _answer(x, w, b), rtol=2e-3, atol=2e-3)


async def test_grpc_on_the_gpu(start_model_server, dense_repository):
    from model_server.grpc_gen import inference_pb2 as pb
    from model_server.grpc_gen import inference_pb2_grpc as pb_grpc

    root, w, b = dense_repository
    server = await start_model_server(root)
    x = np.random.default_rng(2).standard_normal((4, 256)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="dense")
    request.inputs.add(name="x", datatype="FP32", shape=[4, 256])
    request.raw_input_contents.append(x.tobytes())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    y = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(4, 128)
    np.testing.assert_allclose(y, _answer(x, w, b), rtol=2e-3, atol=2e-3)


async def test_batching_on_the_gpu_gives_each_caller_its_rows(start_model_server, dense_repository):
    root, w, b = dense_repository
    server = await start_model_server(root)
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((1 + i % 3, 256)).astype(np.float32) for i in range(48)]

    async def call(http: aiohttp.ClientSession, x: np.ndarray) -> np.ndarray:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
        async with http.post("/v2/models/dense_batched/infer", json=body) as response:
            assert response.status == 200, await response.text()
            out = (await response.json())["outputs"][0]
        return np.array(out["data"], dtype=np.float32).reshape(out["shape"])

    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        answers = await asyncio.gather(*(call(http, x) for x in inputs))
    for x, y in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(y, _answer(x, w, b), rtol=2e-3, atol=2e-3)
    assert server.repository.get("dense_batched").providers[0] == CUDA


async def test_fp16_on_the_gpu(start_model_server, dense_repository):
    root, _, _ = dense_repository
    server = await start_model_server(root)
    h = np.array([[1.5, -2.0], [0.25, 4.0]], dtype=np.float16)
    bf16 = struct.pack("<4H", *(np.array([1.0, 2.0, -3.0, 0.5], dtype=np.float32).view(np.uint32) >> 16))
    header = (
        b'{"inputs":[{"name":"h","datatype":"FP16","shape":[2,2],"parameters":{"binary_data_size":8}},'
        b'{"name":"b","datatype":"BF16","shape":[2,2],"parameters":{"binary_data_size":8}}],'
        b'"outputs":[{"name":"h2","parameters":{"binary_data":true}},{"name":"bf","parameters":{"binary_data":true}}]}'
    )
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        async with http.post("/v2/models/half/infer", data=header + h.tobytes() + bf16, headers=headers) as response:
            assert response.status == 200, await response.text()
            raw = await response.read()
            length = int(response.headers["Inference-Header-Content-Length"])
    assert server.repository.get("half").providers[0] == CUDA
    np.testing.assert_array_equal(np.frombuffer(raw[length : length + 8], dtype=np.float16).reshape(2, 2), 2 * h)
    np.testing.assert_array_equal(np.frombuffer(raw[length + 8 :], dtype=np.float32), [1.0, 2.0, -3.0, 0.5])
