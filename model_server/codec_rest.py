"""The Open Inference Protocol's REST body: JSON, with or without the binary tensor data extension.

Which form a body takes is decided by ``Inference-Header-Content-Length`` alone (never by Content-Type): absent,
the whole body is JSON; present, it is the length of the JSON header, and the binary blobs of the inputs that
declare ``binary_data_size`` follow it in input order. Responses carry binary outputs when the request asks
(per output ``binary_data``, which overrides the request-wide ``binary_data_output``), and always for FP16/BF16
and for BYTES that are not UTF-8. The client side (a transformer calling its predictor) sends every input as
binary and asks for binary outputs: :func:`encode_request`, :func:`decode_response`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from common.errors import InvalidInput
from model_server.datatypes import BINARY_ONLY, array_to_raw, element_count, numpy_dtype, raw_to_array
from model_server.types import InferRequest, InferResponse, RequestedOutput, Tensor

IHCL = "Inference-Header-Content-Length"
_NUMPY_OPTS = orjson.OPT_SERIALIZE_NUMPY


def loads(body: bytes | memoryview) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"Unrecognized request format: {exc}") from None


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_NUMPY_OPTS)


def header_length(value: str | None, body_length: int) -> int:
    if value is None:
        return body_length
    try:
        length = int(value)
    except ValueError:
        length = -1
    if not 0 <= length <= body_length:
        raise InvalidInput(
            f"{IHCL} must be an integer from 0 to the body length ({body_length}), got {value!r}"
        )
    if length == 0:
        raise InvalidInput(f"{IHCL}: 0 (a raw binary request without a JSON header) is not supported")
    return length


def decode_request(body: bytes, ihcl: str | None, model_name: str, version: str | None) -> InferRequest:
    split = header_length(ihcl, len(body))
    view = memoryview(body)
    doc = loads(view[:split])
    if not isinstance(doc, dict):
        raise InvalidInput("Unrecognized request format: the inference request must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("the inference request must have a non-empty 'inputs' list")
    offset = split
    inputs = []
    for item in raw_inputs:
        tensor, offset = _decode_input(item, view, offset)
        inputs.append(tensor)
    if offset != len(body):
        raise InvalidInput(f"the body has {len(body) - offset} bytes beyond the binary data its inputs declare")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    return InferRequest(
        model_name=model_name,
        model_version=version,
        id=request_id,
        inputs=inputs,
        outputs=_decode_outputs(doc.get("outputs")),
        parameters=_parameters(doc.get("parameters"), "the request"),
    )


def _decode_input(item: Any, view: memoryview, offset: int, kind: str = "input") -> tuple[Tensor, int]:
    """One input (or, reading a predictor's response, one output) and the offset of the next binary blob."""
    if not isinstance(item, dict):
        raise InvalidInput(f"each {kind} must be a JSON object")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str):
        raise InvalidInput(f"each {kind} needs a string 'name'")
    if not isinstance(datatype, str):
        raise InvalidInput(f"{kind} '{name}' needs a string 'datatype'")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"{kind} '{name}' needs a 'shape' of non-negative integers")
    numpy_dtype(datatype)  # rejects unknown datatypes
    parameters = _parameters(item.get("parameters"), f"{kind} '{name}'")
    size = parameters.pop("binary_data_size", None)
    if size is not None:
        if "data" in item:
            raise InvalidInput(f"{kind} '{name}' has both 'data' and binary_data_size")
        if not isinstance(size, int) or size < 0:
            raise InvalidInput(f"{kind} '{name}': binary_data_size must be a non-negative integer")
        if offset + size > len(view):
            raise InvalidInput(
                f"{kind} '{name}' declares {size} bytes of binary data, but only {len(view) - offset} remain"
            )
        data = raw_to_array(view[offset : offset + size], datatype, tuple(shape), name)
        return Tensor(name, datatype, tuple(shape), data, parameters), offset + size
    if "data" not in item:
        raise InvalidInput(f"{kind} '{name}' has neither 'data' nor binary_data_size")
    if datatype in BINARY_ONLY:
        raise InvalidInput(
            f"Receiving {datatype} data via JSON is not supported; send {kind} '{name}' with the binary data extension"
        )
    data = _json_array(item["data"], datatype, tuple(shape), name)
    return Tensor(name, datatype, tuple(shape), data, parameters), offset


def _json_array(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            array = np.array(_flat_bytes(data, name), dtype=np.object_)
        else:
            array = np.array(data, dtype=numpy_dtype(datatype))
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': data is not a regular array of {datatype}: {exc}") from None
    count = element_count(shape)
    if array.size != count:
        raise InvalidInput(
            f"input '{name}' has {array.size} elements, but shape {list(shape)} needs {count}"
        )
    return array.reshape(shape)


def _flat_bytes(data: list[Any], name: str) -> list[bytes]:
    out: list[bytes] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if not isinstance(item, str):
                raise InvalidInput(f"BYTES input '{name}' must hold strings in JSON, got {type(item).__name__}")
            out.append(item.encode("utf-8"))
        else:
            stack.pop()
    return out


def _decode_outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be a list")
    outputs = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each requested output needs a string 'name'")
        outputs.append(RequestedOutput(item["name"], _parameters(item.get("parameters"), f"output '{item['name']}'")))
    return outputs


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'parameters' of {where} must be an object")
    for key, item in value.items():
        if not isinstance(item, (str, int, float, bool)):
            raise InvalidInput(f"parameter '{key}' of {where} must be a string, number or boolean")
    return dict(value)


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, dict[str, str]]:
    """The response body and its content headers."""
    default_binary = request.parameters.get("binary_data_output") is True
    wanted = {out.name: out.parameters for out in request.outputs} if request.outputs else {}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in response.outputs:
        binary = wanted.get(tensor.name, {}).get("binary_data", default_binary) is True
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        data = None if binary or tensor.datatype in BINARY_ONLY else _json_data(tensor)
        if data is None:
            raw = array_to_raw(tensor.data, tensor.datatype)
            blobs.append(raw)
            entry["parameters"] = {**tensor.parameters, "binary_data_size": len(raw)}
        else:
            if tensor.parameters:
                entry["parameters"] = tensor.parameters
            entry["data"] = data
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=_NUMPY_OPTS)
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return b"".join((header, *blobs)), {"Content-Type": "application/octet-stream", IHCL: str(len(header))}


def _json_data(tensor: Tensor) -> Any:
    """Flat JSON-ready data, or None when the tensor can only travel as binary (BYTES that are not UTF-8)."""
    array = tensor.data
    if tensor.datatype != "BYTES":
        return np.ascontiguousarray(array).reshape(-1)
    out = []
    for item in array.reshape(-1):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                return None
        out.append(item)
    return out


# -- the client side: what a transformer sends its predictor, and reads back ------------------------------------
def encode_request(request: InferRequest) -> tuple[bytes, dict[str, str]]:
    """A request body with every input as binary data, asking for binary outputs; and its content headers."""
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in request.inputs:
        raw = array_to_raw(tensor.data, tensor.datatype)
        blobs.append(raw)
        inputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                       "parameters": {**tensor.parameters, "binary_data_size": len(raw)}})
    doc: dict[str, Any] = {"inputs": inputs, "parameters": {**request.parameters, "binary_data_output": True}}
    if request.id:
        doc["id"] = request.id
    if request.outputs:
        doc["outputs"] = [{"name": out.name, "parameters": {**out.parameters, "binary_data": True}}
                          for out in request.outputs]
    header = orjson.dumps(doc, option=_NUMPY_OPTS)
    return b"".join((header, *blobs)), {"Content-Type": "application/octet-stream", IHCL: str(len(header))}


def decode_response(body: bytes, ihcl: str | None) -> InferResponse:
    """A V2 response body (JSON, or JSON and binary outputs); a malformed one raises InvalidInput."""
    split = header_length(ihcl, len(body))
    view = memoryview(body)
    doc = loads(view[:split])
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
        raise InvalidInput("the inference response must be a JSON object with an 'outputs' list")
    offset, outputs = split, []
    for item in doc["outputs"]:
        tensor, offset = _decode_input(item, view, offset, "output")
        outputs.append(tensor)
    return InferResponse(
        model_name=str(doc.get("model_name", "")),
        model_version=doc.get("model_version"),
        id=str(doc.get("id") or ""),
        outputs=outputs,
        parameters=_parameters(doc.get("parameters"), "the response"),
    )
