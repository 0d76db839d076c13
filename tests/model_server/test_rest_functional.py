"""The model server's REST edge, end to end over loopback: KServe V1, V2 JSON and binary, errors, repository."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import struct
import time
import zlib
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from model_server.onnx_model import default_providers
from tests.models import build_add, build_identity_multi
from tests.slow_model import build_slow

IRIS_ROWS = [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]
IHCL = "Inference-Header-Content-Length"


@pytest.fixture
def repository(tmp_path: Path, iris_repository: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(iris_repository / "sklearn-iris", root / "sklearn-iris")
    build_identity_multi(root / "multi" / "1" / "model.onnx")
    build_slow(root / "slow" / "1" / "model.onnx")
    (root / "slow" / "config.yaml").write_text("instances: 1\n")
    build_add(root / "add" / "1" / "model.onnx", 1.0)
    build_add(root / "add" / "3" / "model.onnx", 3.0)
    return root




async def get_json(http: aiohttp.ClientSession, path: str, status: int = 200) -> dict:
    async with http.get(path) as response:
        assert response.status == status, await response.text()
        assert response.content_type == "application/json"
        return await response.json()


async def post_json(http: aiohttp.ClientSession, path: str, body: object, status: int = 200, **kw) -> dict:
    async with http.post(path, json=body, **kw) as response:
        text = await response.text()
        assert response.status == status, text
        return json.loads(text)


# -- health, metadata, listing -----------------------------------------------------------------------------------
async def test_health_and_server_metadata(http):
    assert await get_json(http, "/") == {"status": "alive"}
    assert await get_json(http, "/v2/health/live") == {"live": True}
    assert await get_json(http, "/v2/health/ready") == {"ready": True}
    meta = await get_json(http, "/v2")
    assert meta["name"] == "servelane"
    assert {"binary_tensor_data", "model_repository_extension"} <= set(meta["extensions"])


async def test_model_lists_and_readiness(http):
    names = {"add", "multi", "sklearn-iris", "slow"}
    assert set((await get_json(http, "/v1/models"))["models"]) == names
    assert set((await get_json(http, "/v2/models"))["models"]) == names
    assert await get_json(http, "/v1/models/sklearn-iris") == {"name": "sklearn-iris", "ready": True}
    assert await get_json(http, "/v2/models/sklearn-iris/ready") == {"name": "sklearn-iris", "ready": True}


async def test_model_metadata_reports_tensors_and_providers(http):
    meta = await get_json(http, "/v2/models/sklearn-iris")
    assert meta["name"] == "sklearn-iris"
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert meta["parameters"]["execution_providers"] == [spec.name for spec in default_providers()]


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/models/nope"),
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v1/models/nope:predict"),
    ],
)
async def test_unknown_model_is_404(http, method, path):
    async with http.request(method, path, json={"instances": [[1]]}) as response:
        assert response.status == 404
        assert await response.json() == {"error": "Model with name nope does not exist."}


async def test_unknown_route_and_wrong_method_use_error_bodies(http):
    async with http.get("/v3/whatever") as response:
        assert response.status == 404
        assert "error" in await response.json()
    async with http.get("/v2/models/add/infer") as response:
        assert response.status == 405
        assert "error" in await response.json()
        assert "POST" in response.headers["Allow"]


# -- KServe V1 ---------------------------------------------------------------------------------------------------
async def test_v1_predict_matches_scikit_learn(http):
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, classes = load_iris(return_X_y=True)
    expected = LogisticRegression(max_iter=1000).fit(features, classes).predict(np.array(IRIS_ROWS)).tolist()
    body = await post_json(http, "/v1/models/sklearn-iris:predict", {"instances": IRIS_ROWS})
    assert body == {"predictions": expected}
    assert expected == [1, 1]


async def test_v1_predict_without_content_type(http):
    payload = json.dumps({"instances": IRIS_ROWS}).encode()
    async with http.post("/v1/models/sklearn-iris:predict", data=payload, headers={"Content-Type": ""}) as response:
        assert response.status == 200
        assert (await response.json())["predictions"] == [1, 1]


async def test_v1_multi_input_rows_by_name(http):
    rows = [{"a": [1, 2, 3], "b": [1, 2, 3], "c": [True, False, True], "s": ["x"]}]
    body = await post_json(http, "/v1/models/multi:predict", {"instances": rows})
    assert body == {"predictions": [[2.0, 4.0, 6.0]]}


@pytest.mark.parametrize(
    "payload,message",
    [
        (b'{"instances": [[6.8, 2.8', "Unrecognized request format"),
        (b'{"instances": 5}', 'Expected "instances" to be a list'),
        (b'{"instances": [[1, 2]]}', "expects [-1, 4]"),
        (b'{"instances": [["a", "b", "c", "d"]]}', "not a regular array"),
        (b'{"instances": [[1, 2, 3, 4], [1]]}', "not a regular array"),
        (b'{"nothing": 1}', '"instances" or "inputs"'),
        (b"[1, 2]", "JSON object"),
    ],
)
async def test_v1_bad_input_is_400(http, payload, message):
    async with http.post(
        "/v1/models/sklearn-iris:predict", data=payload, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        assert message in (await response.json())["error"]


async def test_v1_explain_without_explainer_is_501(http):
    body = await post_json(http, "/v1/models/sklearn-iris:explain", {"instances": IRIS_ROWS}, status=501)
    assert "explainer" in body["error"]


# -- V2 JSON -----------------------------------------------------------------------------------------------------
ADD_REQUEST = {"id": "7", "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [-1, 2, -3, 4]}]}


async def test_v2_json_infer_echoes_id_and_returns_flat_data(http):
    body = await post_json(http, "/v2/models/add/infer", ADD_REQUEST)
    assert body["id"] == "7"
    assert body["model_name"] == "add"
    assert body["model_version"] == "3"
    assert body["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [2.0, 5.0, 0.0, 7.0]}]
    nested = {**ADD_REQUEST, "inputs": [{**ADD_REQUEST["inputs"][0], "data": [[-1, 2, -3, 4]]}]}
    assert await post_json(http, "/v2/models/add/infer", nested) == body


async def test_v2_response_without_request_id_gets_one(http):
    first = await post_json(http, "/v2/models/add/infer", {"inputs": ADD_REQUEST["inputs"]})
    second = await post_json(http, "/v2/models/add/infer", {"inputs": ADD_REQUEST["inputs"]})
    assert isinstance(first["id"], str) and len(first["id"]) > 16
    assert first["id"] != second["id"]


async def test_versioned_paths_serve_each_version(http):
    v1 = await post_json(http, "/v2/models/add/versions/1/infer", ADD_REQUEST)
    assert v1["model_version"] == "1" and v1["outputs"][0]["data"] == [0.0, 3.0, -2.0, 5.0]
    v3 = await post_json(http, "/v2/models/add/versions/3/infer", ADD_REQUEST)
    assert v3["model_version"] == "3" and v3["outputs"][0]["data"] == [2.0, 5.0, 0.0, 7.0]
    assert (await get_json(http, "/v2/models/add/versions/1"))["versions"] == ["1"]
    assert await get_json(http, "/v2/models/add/versions/3/ready") == {"name": "add", "ready": True}
    missing = await post_json(http, "/v2/models/add/versions/2/infer", ADD_REQUEST, status=404)
    assert missing["error"] == "Model with name add version 2 does not exist."
    await get_json(http, "/v2/models/add/versions/2/ready", status=404)


MULTI_INPUTS = [
    {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
    {"name": "b", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]},
    {"name": "c", "shape": [2, 3], "datatype": "BOOL", "data": [True, False, True, False, True, False]},
    {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": ["héllo", "world"]},
]


async def test_v2_json_multi_type_and_output_subset_in_order(http):
    body = await post_json(http, "/v2/models/multi/infer", {"inputs": MULTI_INPUTS})
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["a2"]["data"] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    assert outputs["b1"] == {"name": "b1", "datatype": "INT64", "shape": [2, 3], "data": [2, 3, 4, 5, 6, 7]}
    assert outputs["nc"]["data"] == [False, True, False, True, False, True]
    assert outputs["s_out"] == {"name": "s_out", "datatype": "BYTES", "shape": [2, 1], "data": ["héllo", "world"]}
    subset = {"inputs": MULTI_INPUTS, "outputs": [{"name": "s_out"}, {"name": "b1"}]}
    body = await post_json(http, "/v2/models/multi/infer", subset)
    assert [o["name"] for o in body["outputs"]] == ["s_out", "b1"]


def _add_input(**changes) -> dict:
    return {"inputs": [{**ADD_REQUEST["inputs"][0], **changes}]}


@pytest.mark.parametrize(
    "body,message",
    [
        (_add_input(data=[1, 2, 3]), "has 3 elements, but shape [1, 4] needs 4"),
        (_add_input(shape=None), "'shape'"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "data": [1, 2, 3, 4]}]}, "'datatype'"),
        (_add_input(datatype="FP64"), "has datatype FP64, model 'add' expects FP32"),
        (_add_input(datatype="FP16"), "FP16 data via JSON is not supported"),
        (_add_input(datatype="NOPE"), "invalid datatype 'NOPE'"),
        (_add_input(shape=[4]), "expects [-1, 4]"),
        (_add_input(name="z"), "unexpected inference input 'z'"),
        (_add_input(data=["a", "b", "c", "d"]), "not a regular array of FP32"),
        ({"inputs": []}, "non-empty 'inputs'"),
        ({**ADD_REQUEST, "outputs": [{"name": "nope"}]}, "Unexpected inference output 'nope' for model 'add'"),
        ({**ADD_REQUEST, "id": 5}, "'id' must be a string"),
        ({**ADD_REQUEST, "parameters": {"x": {"nested": 1}}}, "must be a string, number or boolean"),
    ],
)
async def test_v2_bad_input_is_400(http, body, message):
    error = await post_json(http, "/v2/models/add/infer", body, status=400)
    assert message in error["error"]


async def test_v2_malformed_json_is_400(http):
    async with http.post("/v2/models/add/infer", data=b'{"inputs": [') as response:
        assert response.status == 400
        assert (await response.json())["error"].startswith("Unrecognized request format")


# -- binary tensor data extension ------------------------------------------------------------------------------
def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    encoded = json.dumps(header).encode()
    return encoded + b"".join(blobs), {IHCL: str(len(encoded))}


async def post_binary(http, path, body, headers, status=200):
    async with http.post(path, data=body, headers=headers) as response:
        raw = await response.read()
        assert response.status == status, raw
        return response, raw


def split_binary(response, raw: bytes) -> tuple[dict, bytes]:
    length = int(response.headers[IHCL])
    return json.loads(raw[:length]), raw[length:]


async def test_binary_input_and_output(http):
    x = np.array([[-1, 2, -3, 4]], dtype=np.float32)
    header = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}],
        "parameters": {"binary_data_output": True},
    }
    response, raw = await post_binary(http, "/v2/models/add/infer", *binary_body(header, x.tobytes()))
    assert response.headers["Content-Type"] == "application/octet-stream"
    doc, blob = split_binary(response, raw)
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert "data" not in doc["outputs"][0]
    np.testing.assert_array_equal(np.frombuffer(blob, np.float32), (x + 3).ravel())


async def test_binary_output_flag_per_output_overrides_request_flag(http):
    header = {
        "inputs": MULTI_INPUTS,
        "outputs": [{"name": "a2", "parameters": {"binary_data": False}}, {"name": "b1"}],
        "parameters": {"binary_data_output": True},
    }
    response, raw = await post_binary(http, "/v2/models/multi/infer", json.dumps(header).encode(), {})
    doc, blob = split_binary(response, raw)
    assert doc["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    assert doc["outputs"][1]["parameters"]["binary_data_size"] == 48
    np.testing.assert_array_equal(np.frombuffer(blob, "<i8"), np.arange(2, 8))


async def test_json_only_response_has_no_ihcl(http):
    async with http.post("/v2/models/add/infer", json=ADD_REQUEST) as response:
        assert response.headers["Content-Type"] == "application/json"
        assert IHCL not in response.headers


async def test_binary_bytes_and_bool_inputs(http):
    strings = [b"\x00\xffraw", b"ok"]
    bytes_blob = b"".join(struct.pack("<I", len(s)) + s for s in strings)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(6, dtype=np.int64).reshape(2, 3)
    c = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.bool_)
    header = {
        "inputs": [
            {"name": "a", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
            {"name": "b", "shape": [2, 3], "datatype": "INT64", "parameters": {"binary_data_size": 48}},
            {"name": "c", "shape": [2, 3], "datatype": "BOOL", "parameters": {"binary_data_size": 6}},
            {"name": "s", "shape": [2, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(bytes_blob)}},
        ],
        "outputs": [{"name": "nc"}, {"name": "s_out", "parameters": {"binary_data": True}}],
    }
    body, headers = binary_body(header, a.tobytes(), b.tobytes(), c.tobytes(), bytes_blob)
    async with http.post("/v2/models/multi/infer", data=body, headers=headers) as response:
        assert response.status == 400  # the model takes strings; b"\x00\xff" is not UTF-8
        assert "not UTF-8" in (await response.json())["error"]
    strings = ["héllo".encode(), b"ok"]
    bytes_blob = b"".join(struct.pack("<I", len(s)) + s for s in strings)
    header["inputs"][3]["parameters"]["binary_data_size"] = len(bytes_blob)
    response, raw = await post_binary(http, "/v2/models/multi/infer", *binary_body(
        header, a.tobytes(), b.tobytes(), c.tobytes(), bytes_blob
    ))
    doc, blob = split_binary(response, raw)
    assert doc["outputs"][0]["data"] == (~c).ravel().tolist()
    assert blob == bytes_blob


@pytest.mark.parametrize("ihcl", ["abc", "-1", "100000", "0"])
async def test_bad_inference_header_length_is_400(http, ihcl):
    body = json.dumps(ADD_REQUEST).encode()
    async with http.post("/v2/models/add/infer", data=body, headers={IHCL: ihcl}) as response:
        assert response.status == 400
        assert IHCL in (await response.json())["error"]


async def test_binary_sizes_must_match_the_body(http):
    header = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    body, headers = binary_body(header, b"\x00" * 8)
    async with http.post("/v2/models/add/infer", data=body, headers=headers) as response:
        assert response.status == 400
        assert "only 8 remain" in (await response.json())["error"]
    body, headers = binary_body(header, b"\x00" * 20)
    async with http.post("/v2/models/add/infer", data=body, headers=headers) as response:
        assert response.status == 400
        assert "4 bytes beyond" in (await response.json())["error"]
    header["inputs"][0]["parameters"]["binary_data_size"] = 12
    body, headers = binary_body(header, b"\x00" * 12)
    async with http.post("/v2/models/add/infer", data=body, headers=headers) as response:
        assert response.status == 400
        assert "needs 16" in (await response.json())["error"]


async def test_fp16_travels_as_binary(http):
    header = {"inputs": [{"name": "h", "shape": [3], "datatype": "FP16", "parameters": {"binary_data_size": 6}}]}
    body, headers = binary_body(header, np.array([1, 2, 3], np.float16).tobytes())
    async with http.post("/v2/models/add/infer", data=body, headers=headers) as response:
        assert response.status == 400  # accepted by the codec; the model has no input h
        assert "unexpected inference input 'h'" in (await response.json())["error"]


# -- compression -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding,pack", [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_compressed_request_and_response(http, encoding, pack):
    big = {"inputs": [{"name": "x", "shape": [512, 4], "datatype": "FP32", "data": [1.0] * 2048}]}
    headers = {"Content-Encoding": encoding, "Accept-Encoding": f"{encoding}, br", "Content-Type": "application/json"}
    async with http.post(
        "/v2/models/add/infer", data=pack(json.dumps(big).encode()), headers=headers, auto_decompress=False
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Encoding"] == encoding
        raw = await response.read()
        plain = gzip.decompress(raw) if encoding == "gzip" else zlib.decompress(raw)
        assert json.loads(plain)["outputs"][0]["data"][:2] == [4.0, 4.0]


async def test_unknown_request_encoding_is_400(http):
    async with http.post(
        "/v2/models/add/infer", data=b"xx", headers={"Content-Encoding": "br"}
    ) as response:
        assert response.status == 400
        assert "unsupported Content-Encoding" in (await response.json())["error"]


# -- limits ------------------------------------------------------------------------------------------------------
async def test_body_over_limit_is_413(start_model_server, repository):
    server = await start_model_server(repository, max_request_bytes=4096)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        big = {"inputs": [{"name": "x", "shape": [1024, 4], "datatype": "FP32", "data": [1.0] * 4096}]}
        async with http.post("/v2/models/add/infer", json=big) as response:
            assert response.status == 413
            assert "limit" in (await response.json())["error"]

        async def chunks():
            for _ in range(8):
                yield b" " * 1024

        async with http.post("/v2/models/add/infer", data=chunks()) as response:
            assert response.status == 413
            assert "error" in await response.json()
        bomb = gzip.compress(b" " * 1_000_000)
        async with http.post("/v2/models/add/infer", data=bomb, headers={"Content-Encoding": "gzip"}) as response:
            assert response.status == 413
            assert "inflates" in (await response.json())["error"]


# -- readiness of broken models, repository API ------------------------------------------------------------------
async def test_broken_model_is_unavailable_and_server_not_ready(start_model_server, repository):
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    server = await start_model_server(repository)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        await get_json(http, "/v2/health/ready", status=503)
        error = await get_json(http, "/v2/models/broken/ready", status=503)
        assert error == {"error": "Model with name broken is not ready."}
        await get_json(http, "/v1/models/broken", status=503)
        await post_json(http, "/v2/models/broken/infer", ADD_REQUEST, status=503)
        await post_json(http, "/v1/models/broken:predict", {"instances": [[1]]}, status=503)
        async with http.post("/v2/repository/index") as response:
            rows = {row["name"]: row for row in await response.json()}
        assert rows["broken"]["state"] == "UNAVAILABLE" and "InvalidProtobuf" in rows["broken"]["reason"]
        assert rows["add"]["state"] == "READY"
        error = await post_json(http, "/v2/repository/models/broken/load", None, status=503)
        assert "Loading failed" in error["error"]
        shutil.rmtree(repository / "broken")
        await post_json(http, "/v2/repository/models/broken/load", None, status=404)


async def test_unload_then_load(http):
    assert await post_json(http, "/v2/repository/models/add/unload", None) == {"name": "add", "unload": True}
    await get_json(http, "/v2/models/add/ready", status=404)
    async with http.post("/v2/repository/index") as response:
        rows = {row["name"]: row for row in await response.json()}
    assert rows["add"]["state"] == "UNAVAILABLE"
    await post_json(http, "/v2/repository/models/add/unload", None, status=404)
    assert await post_json(http, "/v2/repository/models/add/load", None) == {"name": "add", "load": True}
    assert (await post_json(http, "/v2/models/add/infer", ADD_REQUEST))["outputs"][0]["data"][0] == 2.0


# -- metrics -----------------------------------------------------------------------------------------------------
async def test_metrics_after_requests(http):
    await post_json(http, "/v1/models/sklearn-iris:predict", {"instances": IRIS_ROWS})
    await post_json(http, "/v2/models/add/infer", _add_input(data=[1]), status=400)
    await post_json(http, "/v2/models/nope/infer", ADD_REQUEST, status=404)
    async with http.get("/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert 'request_predict_seconds_bucket{le="0.005",model_name="sklearn-iris"}' in text
    assert 'request_preprocess_seconds_count{model_name="sklearn-iris"} 1.0' in text
    assert 'request_postprocess_seconds_count{model_name="sklearn-iris"} 1.0' in text
    assert 'model_server_requests_total{code="200",model_name="sklearn-iris",protocol="v1"} 1.0' in text
    assert 'model_server_requests_total{code="400",model_name="add",protocol="v2"} 1.0' in text
    assert 'model_server_requests_total{code="404",model_name="_unknown",protocol="v2"} 1.0' in text
    assert 'model_server_inference_batch_size_sum{model_name="sklearn-iris"} 2.0' in text  # two V1 instances
    assert (
        'model_server_execution_provider_info{model_name="sklearn-iris",'
        'provider="CPUExecutionProvider",version="1"} 1.0'
        in text
    )


async def test_batch_size_histogram_counts_rows(http):
    await post_json(http, "/v2/models/add/infer", {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32",
                                                              "data": [0.0] * 12}]})
    async with http.get("/metrics") as response:
        text = await response.text()
    assert 'model_server_inference_batch_size_sum{model_name="add"} 3.0' in text


async def test_server_timing_and_request_id(http):
    async with http.post("/v2/models/add/infer", json=ADD_REQUEST, headers={"x-request-id": "abc"}) as response:
        assert response.headers["x-request-id"] == "abc"
        timing = response.headers["Server-Timing"]
        assert "preprocess;dur=" in timing and "predict;dur=" in timing and "postprocess;dur=" in timing


# -- responsiveness ----------------------------------------------------------------------------------------------
async def test_liveness_answers_while_a_slow_model_call_runs(http):
    slow = {"inputs": [
        {"name": "x", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256},
        {"name": "iterations", "shape": [1], "datatype": "INT64", "data": [300_000]},
    ]}
    call = asyncio.create_task(post_json(http, "/v2/models/slow/infer", slow))
    await asyncio.sleep(0.2)
    assert not call.done()
    worst = 0.0
    for _ in range(10):
        started = time.perf_counter()
        assert await get_json(http, "/v2/health/live") == {"live": True}
        worst = max(worst, time.perf_counter() - started)
        await asyncio.sleep(0.02)
    assert not call.done(), "the slow call should still be running, or this proves nothing"
    assert worst < 0.1
    assert (await call)["outputs"][0]["shape"] == [1, 256]
