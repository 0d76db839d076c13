"""Domain types of the model server, free of any wire format.

Codecs (``codec_rest``, ``codec_grpc``, ``codec_v1``) turn bytes into these and back; the dataplane and the
models see only these. Tensor data is always a numpy array already shaped as the tensor's ``shape``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_server.datatypes import from_numpy

Parameters = dict[str, Any]


@dataclass(slots=True)
class Tensor:
    """One named input or output tensor."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)

    @classmethod
    def from_array(cls, name: str, array: np.ndarray, datatype: str | None = None) -> Tensor:
        """A tensor holding ``array``; the datatype follows its dtype (str and bytes arrays are BYTES)."""
        datatype = datatype or from_numpy(array.dtype)
        if datatype == "BYTES" and array.dtype != np.object_:
            array = array.astype(np.object_)
        return cls(name, datatype, tuple(array.shape), array)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    inputs: list[Tensor]
    id: str | None = None
    model_version: str | None = None
    parameters: Parameters = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def input(self, name: str) -> Tensor | None:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        return None


@dataclass(slots=True)
class InferResponse:
    model_name: str
    outputs: list[Tensor]
    id: str
    model_version: str | None = None
    parameters: Parameters = field(default_factory=dict)

    def output(self, name: str) -> Tensor | None:
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        return None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model's declared input or output: -1 marks a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TensorSpec:
        return cls(str(doc["name"]), str(doc["datatype"]), tuple(int(d) for d in doc["shape"]))


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Parameters = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
        }
        if self.parameters:
            body["parameters"] = self.parameters
        return body

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ModelMetadata:
        """The metadata another server reported (a KeyError or ValueError if it is malformed)."""
        return cls(
            name=str(doc["name"]),
            versions=tuple(str(v) for v in doc.get("versions") or ()),
            platform=str(doc.get("platform", "")),
            inputs=tuple(TensorSpec.from_dict(t) for t in doc.get("inputs") or ()),
            outputs=tuple(TensorSpec.from_dict(t) for t in doc.get("outputs") or ()),
            parameters=dict(doc.get("parameters") or {}),
        )
