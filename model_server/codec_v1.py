"""KServe V1 (TensorFlow Serving style) bodies: ``instances``/``inputs`` to model feeds, outputs to ``predictions``.

Row format: ``{"instances": [row, ...]}`` where a row is the value of the one input, or an object naming every
input. Columnar format: ``{"inputs": value}`` or ``{"inputs": {"name": value, ...}}``. ``inputs`` wins when both
are present (KServe's built-in runtimes read it first).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.errors import InvalidInput
from model_server.datatypes import numpy_dtype
from model_server.types import TensorSpec


def to_feeds(body: Any, inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    if not isinstance(body, dict):
        raise InvalidInput('Expected a JSON object with "instances" or "inputs"')
    if "inputs" in body:
        return _columnar(body["inputs"], inputs)
    if "instances" not in body:
        raise InvalidInput('Expected "instances" or "inputs" in the request body')
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidInput('Expected "instances" to be a list')
    if instances and all(isinstance(row, dict) for row in instances):
        columns = {spec.name: [row.get(spec.name) for row in instances] for spec in inputs}
        for spec in inputs:
            if any(value is None for value in columns[spec.name]):
                raise InvalidInput(f"every instance must name input '{spec.name}'")
        return {spec.name: _array(columns[spec.name], spec) for spec in inputs}
    return {_single(inputs).name: _array(instances, _single(inputs))}


def _columnar(value: Any, inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    if isinstance(value, dict):
        missing = [spec.name for spec in inputs if spec.name not in value]
        if missing:
            raise InvalidInput(f'"inputs" is missing {", ".join(missing)}')
        return {spec.name: _array(value[spec.name], spec) for spec in inputs}
    if not isinstance(value, list):
        raise InvalidInput('Expected "inputs" to be a list or an object of named inputs')
    return {_single(inputs).name: _array(value, _single(inputs))}


def _single(inputs: tuple[TensorSpec, ...]) -> TensorSpec:
    if len(inputs) != 1:
        names = ", ".join(spec.name for spec in inputs)
        raise InvalidInput(f"the model has {len(inputs)} inputs ({names}): name each input in every instance")
    return inputs[0]


def _array(value: Any, spec: TensorSpec) -> np.ndarray:
    if spec.datatype == "BYTES":
        array = np.array(value, dtype=np.object_)
    else:
        try:
            array = np.array(value, dtype=numpy_dtype(spec.datatype))
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"input '{spec.name}' is not a regular array of {spec.datatype}: {exc}") from None
    if array.ndim != len(spec.shape):
        raise InvalidInput(
            f"input '{spec.name}' has shape {list(array.shape)}, the model expects {list(spec.shape)}"
        )
    for got, want in zip(array.shape, spec.shape):
        if want != -1 and got != want:
            raise InvalidInput(
                f"input '{spec.name}' has shape {list(array.shape)}, the model expects {list(spec.shape)}"
            )
    return array


def predictions(array: np.ndarray) -> list[Any]:
    if array.dtype == np.object_:
        return _decode_strings(array.tolist())
    return array.tolist()


def _decode_strings(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode_strings(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value
