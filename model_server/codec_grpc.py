"""The protobuf codec of the gRPC edge: ModelInferRequest → InferRequest, InferResponse → ModelInferResponse.

Pure conversion, no I/O. Inputs may arrive as ``raw_input_contents`` (what tritonclient sends; decoded with
``np.frombuffer``: the array is a read-only view of the bytes object protobuf hands back, with no further copy)
or as typed ``contents``; never both in one request. FP16 and BF16 have no typed field and must be raw.
Responses always carry ``raw_output_contents``, one entry per output in order, because tritonclient's
``as_numpy`` reads nothing else for numeric tensors. The client side (a transformer calling its predictor) is
at the end: :func:`encode_request`, :func:`decode_response`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from common.errors import InferenceError, InvalidInput
from model_server.datatypes import BINARY_ONLY, array_to_raw, element_count, numpy_dtype, raw_to_array
from model_server.grpc_gen import inference_pb2 as pb
from model_server.types import InferRequest, InferResponse, ModelMetadata, RequestedOutput, Tensor, TensorSpec

# The InferTensorContents field that holds each datatype, and the numpy dtype protobuf hands its values back in.
_CONTENTS: dict[str, tuple[str, np.dtype]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(np.object_)),
}

_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


# -- requests ----------------------------------------------------------------------------------------------------
def decode_request(message: pb.ModelInferRequest) -> InferRequest:
    raw = message.raw_input_contents
    if raw:
        if len(raw) != len(message.inputs):
            raise InvalidInput(
                f"expected {len(message.inputs)} entries in raw_input_contents, one per input, got {len(raw)}"
            )
        for tensor in message.inputs:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input '{tensor.name}' sets contents, which is not allowed with raw_input_contents")
        inputs = [_raw_input(tensor, raw[i]) for i, tensor in enumerate(message.inputs)]
    else:
        inputs = [_typed_input(tensor) for tensor in message.inputs]
    outputs = [RequestedOutput(out.name, decode_parameters(out.parameters)) for out in message.outputs]
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version or None,
        id=message.id or None,
        inputs=inputs,
        outputs=outputs or None,
        parameters=decode_parameters(message.parameters),
    )


def _shape(tensor: pb.ModelInferRequest.InferInputTensor) -> tuple[int, ...]:
    shape = tuple(tensor.shape)
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input '{tensor.name}' has a negative dimension in shape {list(shape)}")
    return shape


def _raw_input(tensor: pb.ModelInferRequest.InferInputTensor, buffer: bytes) -> Tensor:
    shape = _shape(tensor)
    data = raw_to_array(buffer, tensor.datatype, shape, tensor.name)
    return Tensor(tensor.name, tensor.datatype, shape, data, decode_parameters(tensor.parameters))


def _typed_input(tensor: pb.ModelInferRequest.InferInputTensor) -> Tensor:
    shape = _shape(tensor)
    numpy_dtype(tensor.datatype)  # an unknown datatype is reported as such, before anything else
    if tensor.datatype in BINARY_ONLY:
        raise InvalidInput(f"input '{tensor.name}': {tensor.datatype} data must be sent in raw_input_contents")
    field, wire_dtype = _CONTENTS[tensor.datatype]
    values = getattr(tensor.contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{tensor.name}' has {len(values)} elements in contents.{field}, "
            f"but shape {list(shape)} of {tensor.datatype} needs {count}"
        )
    if tensor.datatype == "BYTES":
        data = np.empty(count, dtype=np.object_)
        data[:] = list(values)
    else:
        data = _narrow(np.array(values, dtype=wire_dtype), tensor.datatype, tensor.name)
    return Tensor(tensor.name, tensor.datatype, shape, data.reshape(shape), decode_parameters(tensor.parameters))


def _narrow(wide: np.ndarray, datatype: str, name: str) -> np.ndarray:
    """8- and 16-bit integers travel in 32-bit fields; a value that does not fit is an error, not a wrap."""
    dtype = numpy_dtype(datatype)
    if dtype == wide.dtype:
        return wide
    narrow = wide.astype(dtype)
    if not np.array_equal(narrow, wide):
        raise InvalidInput(f"input '{name}' has values out of range for {datatype}")
    return narrow


def decode_parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidInput(f"parameter '{key}' has no value")
        decoded[key] = getattr(parameter, choice)
    return decoded


# -- responses ---------------------------------------------------------------------------------------------------
def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version or "",
        id=response.id,
        raw_output_contents=[array_to_raw(tensor.data, tensor.datatype) for tensor in response.outputs],
    )
    encode_parameters(response.parameters, message.parameters)
    for tensor in response.outputs:
        out = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        encode_parameters(tensor.parameters, out.parameters)
    return message


def encode_parameters(parameters: Mapping[str, Any], target: Any) -> None:
    """Fill a protobuf ``map<string, InferParameter>`` from python scalars."""
    for key, value in parameters.items():
        _set_parameter(target[key], key, value)


def _set_parameter(parameter: pb.InferParameter, key: str, value: Any) -> None:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):  # before int: bool is an int subclass
        parameter.bool_param = value
    elif isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
        parameter.int64_param = value
    elif isinstance(value, int) and 0 <= value <= _UINT64_MAX:
        parameter.uint64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    elif isinstance(value, str):
        parameter.string_param = value
    else:
        raise InferenceError(f"response parameter '{key}' ({type(value).__name__}) cannot be sent over gRPC")


# -- metadata ----------------------------------------------------------------------------------------------------
def encode_model_metadata(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=metadata.name,
        versions=list(metadata.versions),
        platform=metadata.platform,
        inputs=[_tensor_metadata(spec) for spec in metadata.inputs],
        outputs=[_tensor_metadata(spec) for spec in metadata.outputs],
    )


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))


# -- the client side: what a transformer sends its predictor, and reads back ------------------------------------
def encode_request(request: InferRequest) -> pb.ModelInferRequest:
    """A ModelInferRequest with every input in ``raw_input_contents`` (what tritonclient sends)."""
    message = pb.ModelInferRequest(
        model_name=request.model_name,
        model_version=request.model_version or "",
        id=request.id or "",
        raw_input_contents=[array_to_raw(tensor.data, tensor.datatype) for tensor in request.inputs],
    )
    encode_parameters(request.parameters, message.parameters)
    for tensor in request.inputs:
        entry = message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        encode_parameters(tensor.parameters, entry.parameters)
    for out in request.outputs or ():
        encode_parameters(out.parameters, message.outputs.add(name=out.name).parameters)
    return message


def decode_response(message: pb.ModelInferResponse) -> InferResponse:
    """Raw or typed output contents to an InferResponse; a malformed message raises InvalidInput."""
    raw = message.raw_output_contents
    if raw and len(raw) != len(message.outputs):
        raise InvalidInput(f"{len(message.outputs)} outputs but {len(raw)} entries in raw_output_contents")
    outputs = [_raw_input(t, raw[i]) if raw else _typed_input(t) for i, t in enumerate(message.outputs)]
    return InferResponse(
        model_name=message.model_name,
        model_version=message.model_version or None,
        id=message.id,
        outputs=outputs,
        parameters=decode_parameters(message.parameters),
    )


def decode_model_metadata(message: pb.ModelMetadataResponse) -> ModelMetadata:
    def specs(tensors: Any) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in tensors)

    return ModelMetadata(message.name, tuple(message.versions), message.platform,
                         specs(message.inputs), specs(message.outputs))
