"""Models for the pipeline tests: a linear model whose attributions are known by hand, and Python model classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.models import save_model

# y = x @ W + C for x of 3 features; label = argmax(y). Occluding feature i moves y[k] by W[i, k] * (x[i] - b[i]).
W = np.array([[1.0, -2.0], [0.5, 3.0], [-4.0, 0.25]], dtype=np.float32)
C = np.array([0.5, -1.0], dtype=np.float32)


def build_linear(path: Path) -> Path:
    """x FP32 [-1, 3] -> label INT64 [-1] (declared first, so an explainer must pick y itself), y FP32 [-1, 2]."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "C"], ["y"]),
            helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2]),
        ],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(C, "C")],
    )
    return save_model(graph, path)
