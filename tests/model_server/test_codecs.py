"""Wire codecs and helpers without sockets: the binary extension, BYTES layout, compression, model config."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest

from common.errors import InvalidInput, PayloadTooLarge
from model_server import codec_rest, compression
from model_server.datatypes import deserialize_bytes, serialize_bytes
from model_server.model_config import ModelConfig, ModelConfigError
from model_server.types import InferRequest, InferResponse, RequestedOutput, Tensor


def test_bytes_round_trip_and_layout():
    array = np.array([b"ab", b"", "é"], dtype=np.object_)
    raw = serialize_bytes(array)
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 2) + "é".encode()
    assert deserialize_bytes(raw, 3, "s").tolist() == [b"ab", b"", "é".encode()]
    with pytest.raises(InvalidInput, match="truncated"):
        deserialize_bytes(raw[:-1], 3, "s")
    with pytest.raises(InvalidInput, match="trailing"):
        deserialize_bytes(raw + b"x", 3, "s")


def test_decode_binary_request_is_zero_copy():
    values = np.arange(8, dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 32}}]}).encode()
    body = header + values.tobytes()
    request = codec_rest.decode_request(body, str(len(header)), "m", None)
    tensor = request.inputs[0]
    assert tensor.shape == (2, 4) and tensor.parameters == {}
    np.testing.assert_array_equal(tensor.data.ravel(), values)
    assert not tensor.data.flags.owndata  # a view into the body


def test_encode_response_binary_and_json_mix():
    response = InferResponse("m", [
        Tensor("a", "FP32", (2,), np.array([1, 2], np.float32)),
        Tensor("h", "FP16", (1,), np.array([1], np.float16)),
        Tensor("s", "BYTES", (1,), np.array([b"\xff"], np.object_)),
    ], id="1", model_version="1")
    request = InferRequest("m", [], outputs=[RequestedOutput("a"), RequestedOutput("h"), RequestedOutput("s")])
    body, headers = codec_rest.encode_response(response, request)
    length = int(headers[codec_rest.IHCL])
    doc = json.loads(body[:length])
    assert doc["outputs"][0]["data"] == [1.0, 2.0]
    assert doc["outputs"][1]["parameters"] == {"binary_data_size": 2}  # FP16 cannot be JSON
    assert doc["outputs"][2]["parameters"] == {"binary_data_size": 5}  # nor can bytes that are not UTF-8
    assert body[length:] == np.array([1], np.float16).tobytes() + struct.pack("<I", 1) + b"\xff"


@pytest.mark.parametrize("accept,chosen", [
    (None, None), ("", None), ("br", None), ("gzip, deflate, br", "gzip"), ("deflate, gzip", "deflate"),
    ("gzip;q=0.5, deflate;q=0.8", "deflate"), ("identity;q=1, gzip;q=0.5", None), ("gzip;q=0", None),
])
def test_response_encoding_choice(accept, chosen):
    assert compression.choose(accept) == chosen


def test_decompress():
    assert compression.decompress(gzip.compress(b"abc"), "gzip", 10) == b"abc"
    assert compression.decompress(zlib.compress(b"abc"), "Deflate", 10) == b"abc"
    with pytest.raises(PayloadTooLarge):
        compression.decompress(gzip.compress(b"a" * 100), "gzip", 10)
    with pytest.raises(InvalidInput, match="truncated"):
        compression.decompress(gzip.compress(b"abc" * 100)[:20], "gzip", 1000)
    with pytest.raises(InvalidInput, match="not valid"):
        compression.decompress(b"plain", "gzip", 10)


def test_model_config_validation():
    config = ModelConfig.from_dict({
        "max_batch_size": 8, "instances": 2, "version_policy": {"latest": 1},
        "execution_providers": [{"name": "CUDAExecutionProvider", "options": {"device_id": 0}}, "CPUExecutionProvider"],
    })
    assert config.execution_providers[0].as_ort() == ("CUDAExecutionProvider", {"device_id": 0})
    assert config.select_versions([3, 1, 2]) == [3]
    assert ModelConfig.from_dict({"version_policy": {"specific": [1, 3]}}).select_versions([1, 2, 3]) == [1, 3]
    with pytest.raises(ModelConfigError, match="unsupported key.*max_batch"):
        ModelConfig.from_dict({"max_batch": 8})
    with pytest.raises(ModelConfigError, match="instances"):
        ModelConfig.from_dict({"instances": 0})
    with pytest.raises(ModelConfigError, match="version_policy"):
        ModelConfig.from_dict({"version_policy": "newest"})
