"""Real Triton HTTP clients against the model server: tritonclient.http (binary and JSON) and tritonclient.http.aio."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.models import build_identity_multi

IRIS = np.array([[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]], dtype=np.float32)


@pytest.fixture
def repository(tmp_path: Path, iris_repository: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(iris_repository / "sklearn-iris", root / "sklearn-iris")
    build_identity_multi(root / "multi" / "1" / "model.onnx")
    return root


@pytest.fixture
async def url(start_model_server, repository) -> str:
    server = await start_model_server(repository)
    return f"127.0.0.1:{server.http_port}"


def multi_inputs(binary: bool, module=httpclient) -> tuple[list, dict[str, np.ndarray]]:
    arrays = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.arange(6, dtype=np.int64).reshape(2, 3) - 3,
        "c": np.array([[True, False, True], [False, False, True]]),
        "s": np.array([["héllo".encode()], [b"world"]], dtype=np.object_),
    }
    datatypes = {"a": "FP32", "b": "INT64", "c": "BOOL", "s": "BYTES"}
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), datatypes[name])
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs, arrays


def check_multi(result, arrays: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(result.as_numpy("a2"), arrays["a"] * 2)
    np.testing.assert_array_equal(result.as_numpy("b1"), arrays["b"] + 1)
    np.testing.assert_array_equal(result.as_numpy("nc"), ~arrays["c"])
    assert result.as_numpy("s_out").tolist() == arrays["s"].tolist()


def sync_round_trip(url: str, binary: bool) -> None:
    client = httpclient.InferenceServerClient(url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("sklearn-iris")
        assert not client.is_model_ready("nope")
        meta = client.get_model_metadata("sklearn-iris")
        assert meta["inputs"][0]["shape"] == [-1, 4]
        x = httpclient.InferInput("input", [2, 4], "FP32")
        x.set_data_from_numpy(IRIS, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
        result = client.infer("sklearn-iris", [x], outputs=outputs, request_id="r1")
        assert result.as_numpy("label").tolist() == [1, 1]
        assert result.as_numpy("probabilities").shape == (2, 3)
        assert result.get_response()["id"] == "r1"
        inputs, arrays = multi_inputs(binary)
        check_multi(client.infer("multi", inputs), arrays)
        result = client.infer(
            "multi", inputs, outputs=[httpclient.InferRequestedOutput("b1", binary_data=binary)],
            request_compression_algorithm="gzip", response_compression_algorithm="deflate",
        )
        assert [o["name"] for o in result.get_response()["outputs"]] == ["b1"]
        with pytest.raises(InferenceServerException, match="Model with name nope does not exist") as raised:
            client.infer("nope", [x])
        assert raised.value.status() == "404"
        bad = httpclient.InferInput("input", [2, 4], "FP64")
        bad.set_data_from_numpy(IRIS.astype(np.float64), binary_data=binary)
        with pytest.raises(InferenceServerException, match="expects FP32") as raised:
            client.infer("sklearn-iris", [bad])
        assert raised.value.status() == "400"
        index = {row["name"]: row for row in client.get_model_repository_index()}
        assert index["sklearn-iris"]["state"] == "READY"
        client.unload_model("multi")
        assert not client.is_model_ready("multi")
        client.load_model("multi")
        assert client.is_model_ready("multi")
    finally:
        client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_tritonclient_http(url, binary):
    await asyncio.to_thread(sync_round_trip, url, binary)


async def test_tritonclient_http_aio_accepts_gzip_never_br(url):
    client = aioclient.InferenceServerClient(url)
    try:
        assert await client.is_server_ready()
        inputs, arrays = multi_inputs(True, aioclient)
        check_multi(await client.infer("multi", inputs), arrays)
        big = np.tile(IRIS, (200, 1))
        x = aioclient.InferInput("input", list(big.shape), "FP32")
        x.set_data_from_numpy(big, binary_data=False)
        result = await client.infer(
            "sklearn-iris", [x], outputs=[aioclient.InferRequestedOutput("label", binary_data=False)]
        )
        assert result.as_numpy("label").tolist() == [1, 1] * 200
    finally:
        await client.close()
