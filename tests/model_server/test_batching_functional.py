"""Dynamic batching through the real server: concurrent REST and gRPC requests with distinct inputs form one batch
and each caller checks its own answer; a bad input is rejected alone; BYTES and requested outputs survive."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient

from tests.models import build_add, build_identity_multi

# A long delay: a batch goes only when it is full, so the tests know exactly which batches form without sleeping.
BATCHING = "dynamic_batching:\n  max_batch_rows: {rows}\n  max_queue_delay_us: 20000000\n"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    build_identity_multi(root / "multi" / "1" / "model.onnx")
    (root / "multi" / "config.yaml").write_text(BATCHING.format(rows=8))
    build_add(root / "add" / "1" / "model.onnx", 1.0)
    (root / "add" / "config.yaml").write_text(BATCHING.format(rows=3))
    return root



def inputs(i: int) -> dict[str, np.ndarray]:
    return {
        "a": np.array([[i, i + 0.5, -i]], dtype=np.float32),
        "b": np.array([[i, 10 * i, 100 * i]], dtype=np.int64),
        "c": np.array([[i % 2 == 0, True, False]]),
        "s": np.array([[f"caller-{i}-é".encode()]], dtype=np.object_),
    }


EXPECTED = {"a2": lambda x: x["a"] * 2, "b1": lambda x: x["b"] + 1, "nc": lambda x: ~x["c"], "s_out": lambda x: x["s"]}
WANTED = [None, ["s_out"], ["b1", "a2"], ["nc", "s_out", "a2"]]  # caller i asks for WANTED[i % 4]


async def rest_call(http: aiohttp.ClientSession, i: int) -> dict[str, np.ndarray]:
    x = inputs(i)
    body = {"id": f"rest-{i}", "inputs": [
        {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": x["a"].ravel().tolist()},
        {"name": "b", "shape": [1, 3], "datatype": "INT64", "data": x["b"].ravel().tolist()},
        {"name": "c", "shape": [1, 3], "datatype": "BOOL", "data": x["c"].ravel().tolist()},
        {"name": "s", "shape": [1, 1], "datatype": "BYTES", "data": [x["s"].item().decode()]},
    ]}
    if WANTED[i % 4]:
        body["outputs"] = [{"name": n} for n in WANTED[i % 4]]
    async with http.post("/v2/models/multi/infer", json=body) as response:
        doc = await response.json()
        assert response.status == 200, doc
        assert doc["id"] == f"rest-{i}"
        assert "batch_queue;dur=" in response.headers["Server-Timing"]
    dtypes = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_}
    out = {}
    for o in doc["outputs"]:
        if o["datatype"] == "BYTES":
            out[o["name"]] = np.array([v.encode() for v in o["data"]], dtype=np.object_).reshape(o["shape"])
        else:
            out[o["name"]] = np.array(o["data"], dtype=dtypes[o["datatype"]]).reshape(o["shape"])
    return out


async def grpc_call(client: grpcclient.InferenceServerClient, i: int) -> dict[str, np.ndarray]:
    x = inputs(i)
    tensors = []
    for name, datatype in (("a", "FP32"), ("b", "INT64"), ("c", "BOOL"), ("s", "BYTES")):
        tensor = grpcclient.InferInput(name, list(x[name].shape), datatype)
        tensor.set_data_from_numpy(x[name])
        tensors.append(tensor)
    outputs = [grpcclient.InferRequestedOutput(n) for n in WANTED[i % 4]] if WANTED[i % 4] else None
    result = await client.infer("multi", tensors, outputs=outputs, request_id=f"grpc-{i}")
    assert result.get_response().id == f"grpc-{i}"
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


def check(i: int, answer: dict[str, np.ndarray]) -> None:
    names = WANTED[i % 4] or ["a2", "b1", "nc", "s_out"]
    assert list(answer) == names, f"caller {i} got outputs {list(answer)}"
    for name in names:
        np.testing.assert_array_equal(answer[name], EXPECTED[name](inputs(i)), err_msg=f"caller {i}, {name}")


def sample(server, name: str, labels: dict[str, str]) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_rest_and_grpc_callers_share_one_batch_and_each_gets_its_own_rows(server):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
            calls = [rest_call(http, i) if i % 2 else grpc_call(client, i) for i in range(8)]
            answers = await asyncio.wait_for(asyncio.gather(*calls), 30)
    finally:
        await client.close()
    for i, answer in enumerate(answers):
        check(i, answer)
    labels = {"model_name": "multi"}
    assert sample(server, "model_server_batch_rows_count", labels) == 1  # one batch ...
    assert sample(server, "model_server_batch_rows_sum", labels) == 8  # ... of all 8 rows
    assert sample(server, "model_server_batch_requests_sum", labels) == 8
    assert sample(server, "model_server_batch_queue_wait_seconds_count", labels) == 8


async def test_a_bad_input_is_rejected_alone_and_the_others_batch(server):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:

        async def call(rows: list) -> tuple[int, dict]:
            body = {"inputs": [{"name": "x", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                                "data": [v for row in rows for v in row]}]}
            async with http.post("/v2/models/add/infer", json=body) as response:
                return response.status, await response.json()

        good = [[[1, 2, 3, 4]], [[10, 20, 30, 40], [50, 60, 70, 80]]]  # 3 rows: exactly a full batch
        bad = [[1, 2, 3]]  # wrong width: validation refuses it before it can join (and fail) a batch
        results = await asyncio.wait_for(asyncio.gather(*(call(rows) for rows in [good[0], bad, good[1]])), 30)
    (s1, r1), (s2, r2), (s3, r3) = results
    assert (s1, r1["outputs"][0]["data"]) == (200, [2, 3, 4, 5])
    assert s2 == 400 and "has shape [1, 3]" in r2["error"]
    assert (s3, r3["outputs"][0]["data"]) == (200, [11, 21, 31, 41, 51, 61, 71, 81])
    assert sample(server, "model_server_batch_rows_sum", {"model_name": "add"}) == 3
    assert sample(server, "model_server_batch_rows_count", {"model_name": "add"}) == 1


async def test_v1_requests_to_a_batched_onnx_model_still_work_unbatched(server):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        async with http.post("/v1/models/add:predict", json={"instances": [[0, 0, 0, 1]]}) as response:
            assert await response.json() == {"predictions": [[1, 1, 1, 2]]}
    assert sample(server, "model_server_batch_rows_count", {"model_name": "add"}) == 0


async def test_batching_by_flag_for_a_single_model(start_model_server, tmp_path: Path):
    from model_server.model_config import BatchingConfig, ModelConfig

    path = build_add(tmp_path / "add.onnx", 2.0)
    defaults = ModelConfig(dynamic_batching=BatchingConfig(4, 20_000_000))
    server = await start_model_server(model_name="add", model_path=path, model_defaults=defaults)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:

        async def call(i: int) -> list:
            body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [i, i, i, i]}]}
            async with http.post("/v2/models/add/infer", json=body) as response:
                return (await response.json())["outputs"][0]["data"]

        answers = await asyncio.wait_for(asyncio.gather(*(call(i) for i in range(4))), 30)
    assert answers == [[i + 2.0] * 4 for i in range(4)]
    assert sample(server, "model_server_batch_rows_sum", {"model_name": "add"}) == 4


async def test_a_bytes_value_that_is_not_utf8_fails_alone_not_its_batch(server):
    """onnxruntime takes strings: the request whose BYTES element is not UTF-8 is refused before it can join a batch,
    and the eight good ones still make one full batch of their own."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")

    async def bad() -> None:
        x = inputs(0)
        x["s"] = np.array([[b"\xff\xfe not text"]], dtype=np.object_)
        tensors = []
        for name, datatype in (("a", "FP32"), ("b", "INT64"), ("c", "BOOL"), ("s", "BYTES")):
            tensor = grpcclient.InferInput(name, list(x[name].shape), datatype)
            tensor.set_data_from_numpy(x[name])
            tensors.append(tensor)
        await client.infer("multi", tensors)

    try:
        first = asyncio.ensure_future(bad())
        good = [grpc_call(client, i) for i in range(1, 9)]
        refused, *answers = await asyncio.wait_for(asyncio.gather(first, *good, return_exceptions=True), 15)
    finally:
        await client.close()
    assert "INVALID_ARGUMENT" in str(refused) and "not UTF-8" in str(refused)
    for i, answer in enumerate(answers, start=1):
        assert not isinstance(answer, BaseException), answer
        check(i, answer)
    assert sample(server, "model_server_batch_rows_count", {"model_name": "multi"}) == 1
    assert sample(server, "model_server_batch_rows_sum", {"model_name": "multi"}) == 8
