"""ONNX models the benchmarks serve, built with onnx.helper (fixed seeds, nothing downloaded), in Triton's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.models import save_model

ROOT = Path(__file__).resolve().parent.parent
IRIS = ROOT / "examples" / "models" / "sklearn-iris" / "1" / "model.onnx"
MLP_LAYERS = (512, 2048, 2048, 1000)
BIG_ELEMENTS = 1 << 20  # 1M FP32 = 4 MiB


def build_mlp(path: Path, layers: tuple[int, ...] = MLP_LAYERS, seed: int = 0) -> Path:
    """x FP32 [-1, 512] -> Gemm+Relu, Gemm+Relu, Gemm -> y FP32 [-1, 1000]; He-scaled random weights."""
    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(zip(layers, layers[1:])):
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{i}")]
        last = i == len(layers) - 2
        out = "y" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out if last else f"g{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, layers[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, layers[-1]])],
        initializer=inits,
    )
    return save_model(graph, path)


def build_identity(path: Path, elements: int = BIG_ELEMENTS) -> Path:
    """x FP32 [-1, elements] -> y = Identity(x): the model does nothing, so the transport is what is measured."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, elements])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, elements])],
    )
    return save_model(graph, path)


def build_repository(root: Path) -> Path:
    """A repository with sklearn-iris (the example), mlp and identity-4m, each as ``<model>/1/model.onnx``."""
    iris = root / "sklearn-iris" / "1" / "model.onnx"
    iris.parent.mkdir(parents=True, exist_ok=True)
    iris.write_bytes(IRIS.read_bytes())
    build_mlp(root / "mlp" / "1" / "model.onnx")
    build_identity(root / "identity-4m" / "1" / "model.onnx")
    return root
