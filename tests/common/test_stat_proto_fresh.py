"""The committed Stat stubs are what scripts/gen_proto.py makes of proto/stat.proto today, the message is
Knative's autoscaler Stat on the wire, and it lives in a descriptor pool of its own."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor

from common.proto_gen.stat_pb2 import Stat
from tests.harness import ROOT

GENERATED = ROOT / "common" / "proto_gen"
FILES = ("stat_pb2.py", "stat_pb2.pyi")

# Knative Serving pkg/autoscaler/metrics/stat.proto: name -> (number, type)
KNATIVE_STAT = {
    "pod_name": (1, FieldDescriptor.TYPE_STRING),
    "average_concurrent_requests": (2, FieldDescriptor.TYPE_DOUBLE),
    "average_proxied_concurrent_requests": (3, FieldDescriptor.TYPE_DOUBLE),
    "request_count": (4, FieldDescriptor.TYPE_DOUBLE),
    "proxied_request_count": (5, FieldDescriptor.TYPE_DOUBLE),
    "process_uptime": (6, FieldDescriptor.TYPE_DOUBLE),
    "timestamp": (7, FieldDescriptor.TYPE_INT64),
}


@pytest.mark.parametrize("name", FILES)
def test_committed_stub_matches_a_fresh_generation(fresh_stubs: Path, name: str) -> None:
    assert (GENERATED / name).read_bytes() == (fresh_stubs / name).read_bytes(), (
        f"common/proto_gen/{name} is stale: run `make proto` and commit the result"
    )


def test_fields_are_knatives() -> None:
    fields = {field.name: (field.number, field.type) for field in Stat.DESCRIPTOR.fields}
    assert fields == KNATIVE_STAT
    assert Stat.DESCRIPTOR.full_name == "metrics.Stat"


def test_wire_bytes() -> None:
    stat = Stat(pod_name="p", request_count=1.0, timestamp=2)
    # field 1 length-delimited "p"; field 4 fixed64 double 1.0; field 7 varint 2
    assert stat.SerializeToString() == b"\x0a\x01p" + b"\x21" + struct.pack("<d", 1.0) + b"\x38\x02"


def test_stubs_keep_out_of_the_default_descriptor_pool() -> None:
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindMessageTypeByName("metrics.Stat")
