"""Builds examples/models/sklearn-iris/1/model.onnx: a classifier trained on scikit-learn's bundled iris data.

Run with the test extra installed: ``.venv/bin/python examples/make_iris.py``. The output is deterministic for a
given scikit-learn and skl2onnx version. Outputs: ``label`` (INT64 class index, what KServe's sklearn server
answers) and ``probabilities`` (FP32 [N, 3]).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def build(path: Path) -> Path:
    features, classes = load_iris(return_X_y=True)
    classifier = LogisticRegression(max_iter=1000).fit(features, classes)
    onnx_model = to_onnx(
        classifier,
        features[:1].astype(np.float32),
        options={id(classifier): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onnx_model.graph.input[0].name = "input"  # skl2onnx calls it X; a plainer name for V2 clients
    for node in onnx_model.graph.node:
        node.input[:] = ["input" if name == "X" else name for name in node.input]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_model.SerializeToString())
    return path


if __name__ == "__main__":
    default = Path(__file__).parent / "models" / "sklearn-iris" / "1" / "model.onnx"
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else default))
