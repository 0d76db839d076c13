"""The model name read from a raw gRPC request message, without decoding the rest (gateway.grpc_routes)."""

from __future__ import annotations

import pytest

from gateway.grpc_routes import model_name
from model_server.grpc_gen import inference_pb2 as pb


def test_the_model_name_of_each_routable_request() -> None:
    infer = pb.ModelInferRequest(model_name="sklearn-iris", model_version="2", id="r1")
    infer.raw_input_contents.append(b"\x00" * 1024)
    assert model_name(infer.SerializeToString()) == "sklearn-iris"
    assert model_name(pb.ModelMetadataRequest(name="other-model").SerializeToString()) == "other-model"
    assert model_name(pb.ModelReadyRequest(name="ünïcode", version="1").SerializeToString()) == "ünïcode"


def test_field_one_after_other_fields() -> None:
    """Serializers write field 1 first, but the wire allows any order: varint, fixed and length-delimited fields
    before it are skipped."""
    tail = pb.ModelInferRequest(model_name="late").SerializeToString()
    head = pb.ModelInferRequest(id="r" * 300, model_version="3").SerializeToString()
    fixed64 = bytes([9 << 3 | 1]) + b"\x01" * 8
    fixed32 = bytes([10 << 3 | 5]) + b"\x01" * 4
    varint = bytes([11 << 3 | 0, 0xFF, 0xFF, 0x01])
    assert model_name(head + fixed64 + fixed32 + varint + tail) == "late"


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # an empty message: no name
        pb.ModelInferRequest(id="only-an-id").SerializeToString(),
        b"\x0a\x05abc",  # length beyond the end
        b"\x0a",  # truncated length
        b"\x0a\x02\xff\xfe",  # not UTF-8
        b"\x0b\x00",  # a group start: not in these messages
        b"\x18\xff\xff",  # truncated varint
    ],
)
def test_no_name_in_malformed_or_nameless_messages(raw: bytes) -> None:
    assert model_name(raw) is None
