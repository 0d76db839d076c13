"""Open Inference Protocol datatypes: their numpy dtypes, sizes, the BYTES wire layout, and ONNX type names.

BF16 has no numpy dtype; its elements travel as raw 16-bit words and are held as ``uint16`` arrays tagged BF16.
BYTES elements are held as an object array of ``bytes``; on the wire each is a 4-byte little-endian length and
then the bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from common.errors import InferenceError, InvalidInput

_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
    "BYTES": np.dtype(np.object_),
}

_FROM_NUMPY: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}

# onnxruntime's NodeArg.type strings.
_FROM_ONNX: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}

# Datatypes that cannot be written as JSON numbers without losing what they are.
BINARY_ONLY = frozenset({"FP16", "BF16"})

_LENGTH = struct.Struct("<I")


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return _NUMPY[datatype]
    except KeyError:
        raise InvalidInput(f"invalid datatype '{datatype}'") from None


def from_numpy(dtype: np.dtype) -> str:
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _FROM_NUMPY[dtype.name]
    except KeyError:
        raise InvalidInput(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


def from_onnx(onnx_type: str) -> str:
    try:
        return _FROM_ONNX[onnx_type]
    except KeyError:
        raise ValueError(f"ONNX type {onnx_type} is not supported") from None


def element_size(datatype: str) -> int:
    """Bytes per element on the wire; 0 for BYTES, whose elements vary."""
    return 0 if datatype == "BYTES" else numpy_dtype(datatype).itemsize


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES tensor to its wire form, in row-major order."""
    parts: list[bytes] = []
    for item in array.ravel(order="C"):
        if isinstance(item, str):
            raw = item.encode("utf-8")
        elif isinstance(item, (bytes, bytearray, memoryview, np.bytes_)):
            raw = bytes(item)
        else:
            raise InferenceError(f"a BYTES tensor holds a {type(item).__name__}, not bytes or str")
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Wire form to an object array of ``count`` bytes elements; every byte must be accounted for."""
    view = memoryview(buffer)
    out = np.empty(count, dtype=np.object_)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(f"BYTES input '{name}' is truncated: element {i} has no length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"BYTES input '{name}' is truncated: element {i} needs {length} bytes")
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(f"BYTES input '{name}' has {len(view) - offset} unexpected trailing bytes")
    return out


def raw_to_array(buffer: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Raw little-endian tensor contents to an array of ``shape``, without copying where the layout allows."""
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(buffer, count, name).reshape(shape)
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidInput(
            f"input '{name}' has {len(buffer)} bytes of data, but shape {list(shape)} of {datatype} needs {expected}"
        )
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def array_to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes(array)
    dtype = numpy_dtype(datatype)
    return np.ascontiguousarray(array, dtype=dtype).tobytes()
