"""A model whose call takes as long as the caller asks: ``y = tanh(y @ W)`` repeated ``iterations`` times.

Inputs: ``x`` FP32 [-1, 256], ``iterations`` INT64 [1]. Output: ``y`` FP32 [-1, 256]. onnxruntime runs the loop
in C++ with the GIL released, so it is a real, CPU-bound slow model call.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 256


def build_slow(path: Path) -> Path:
    weights = numpy_helper.from_array(
        (np.random.default_rng(0).standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32), "W"
    )
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["y_in", "W"], ["product"]),
            helper.make_node("Tanh", ["product"], ["y_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("y_in", TensorProto.FLOAT, [None, WIDTH]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("y_out", TensorProto.FLOAT, [None, WIDTH]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Squeeze", ["iterations"], ["trip"]),
            helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body),
        ],
        "slow",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH]),
            helper.make_tensor_value_info("iterations", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, WIDTH])],
        initializer=[weights, numpy_helper.from_array(np.array(True), "cond")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def slow_repository(root: Path, iris_repository: Path, instances: int) -> Path:
    """A repository at ``root``: the example iris model beside ``slow`` (``instances`` calls at once, one
    onnxruntime thread each), for tests that hold requests in flight."""
    shutil.copytree(iris_repository / "sklearn-iris", root / "sklearn-iris")
    build_slow(root / "slow" / "1" / "model.onnx")
    (root / "slow" / "config.yaml").write_text(f"instances: {instances}\nintra_op_threads: 1\n")
    return root
