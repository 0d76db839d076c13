"""The committed gRPC stubs are what scripts/gen_proto.py makes of proto/inference.proto today, and that proto is
wire-compatible with Triton's (the stubs tritonclient ships), message by message and method by method."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor
from tritonclient.grpc import service_pb2 as triton_pb

from model_server.grpc_gen import inference_pb2 as ours_pb
from tests.harness import ROOT

GENERATED = ROOT / "model_server" / "grpc_gen"
FILES = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def _generator_version(text: str) -> str:
    match = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text)
    return match.group(1) if match else "?"


@pytest.mark.parametrize("name", FILES)
def test_committed_stub_matches_a_fresh_generation(fresh_stubs: Path, name: str) -> None:
    committed, regenerated = (GENERATED / name).read_text(), (fresh_stubs / name).read_text()
    versions = (
        _generator_version((GENERATED / "inference_pb2_grpc.py").read_text()),
        _generator_version((fresh_stubs / "inference_pb2_grpc.py").read_text()),
    )
    assert committed == regenerated, (
        f"model_server/grpc_gen/{name} is stale: run `make proto` and commit the result "
        f"(committed stubs made by grpcio-tools {versions[0]}, installed grpcio-tools is {versions[1]})"
    )


def _shape(message: Descriptor) -> dict[str, object]:
    """What a message looks like on the wire: field numbers, types, labels, oneofs and nested messages."""
    return {
        field.name: (
            field.number,
            field.type,
            field.is_repeated,
            field.containing_oneof.name if field.containing_oneof else None,
            _shape(field.message_type) if field.message_type else None,
        )
        for field in message.fields
    }


@pytest.mark.parametrize("name", sorted(ours_pb.DESCRIPTOR.message_types_by_name))
def test_message_is_wire_compatible_with_triton(name: str) -> None:
    ours = ours_pb.DESCRIPTOR.message_types_by_name[name]
    theirs = triton_pb.DESCRIPTOR.message_types_by_name[name]
    assert ours.full_name == theirs.full_name
    assert _shape(ours) == _shape(theirs)


def test_methods_are_tritons() -> None:
    def signature(method) -> tuple[str, str, bool, bool]:  # type: ignore[no-untyped-def]
        return (method.input_type.full_name, method.output_type.full_name, method.client_streaming,
                method.server_streaming)

    ours = ours_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    assert len(ours.methods) == 10
    for method in ours.methods:
        assert signature(method) == signature(theirs.methods_by_name[method.name]), method.name
