"""Models built by the tests with onnx.helper (nothing is downloaded): small graphs whose answers are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9


def save_model(graph: onnx.GraphProto, path: Path) -> Path:
    """Wrap ``graph`` in a model of our opset, check it, and write it to ``path`` (folders made as needed)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def build_add(path: Path, offset: float = 1.0) -> Path:
    """x FP32 [-1, 4] -> y = x + offset, FP32 [-1, 4]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "offset"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        initializer=[numpy_helper.from_array(np.array(offset, dtype=np.float32), "offset")],
    )
    return save_model(graph, path)


def build_identity_multi(path: Path) -> Path:
    """Inputs a FP32, b INT64, c BOOL (each [-1, 3]) and s STRING [-1, 1]; outputs a2 = 2a, b1 = b + 1,
    nc = not c, s_out = s."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["a", "two"], ["a2"]),
            helper.make_node("Add", ["b", "one"], ["b1"]),
            helper.make_node("Not", ["c"], ["nc"]),
            helper.make_node("Identity", ["s"], ["s_out"]),
        ],
        "multi",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, [None, 3]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, [None, 3]),
            helper.make_tensor_value_info("s", TensorProto.STRING, [None, 1]),
        ],
        [
            helper.make_tensor_value_info("a2", TensorProto.FLOAT, [None, 3]),
            helper.make_tensor_value_info("b1", TensorProto.INT64, [None, 3]),
            helper.make_tensor_value_info("nc", TensorProto.BOOL, [None, 3]),
            helper.make_tensor_value_info("s_out", TensorProto.STRING, [None, 1]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        ],
    )
    return save_model(graph, path)


def build_half(path: Path) -> Path:
    """h FP16 [-1, 2] -> h2 = 2h, FP16 [-1, 2]; and b BF16 [-1, 2] -> bf = float(b), FP32 [-1, 2]."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["h", "two"], ["h2"]),
            helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
        ],
        "half",
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT16, [None, 2]),
            helper.make_tensor_value_info("b", TensorProto.BFLOAT16, [None, 2]),
        ],
        [
            helper.make_tensor_value_info("h2", TensorProto.FLOAT16, [None, 2]),
            helper.make_tensor_value_info("bf", TensorProto.FLOAT, [None, 2]),
        ],
        initializer=[numpy_helper.from_array(np.array(2.0, dtype=np.float16), "two")],
    )
    return save_model(graph, path)


def build_dense(path: Path, inputs: int = 64, outputs: int = 32, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """x FP32 [-1, inputs] -> y = relu(x @ w + b), FP32 [-1, outputs]; returns the path, w and b (for the answer)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((inputs, outputs)) / np.sqrt(inputs)).astype(np.float32)
    b = rng.standard_normal(outputs).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, outputs])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return save_model(graph, path), w, b
