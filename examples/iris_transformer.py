"""The iris transformer: named features in, species names out, with the iris predictor as a separate server.

    # the predictor: the example repository (sklearn-iris), gRPC on 8082
    servelane model-server --model-repository examples/models --http-port 8081 --grpc-port 8082
    # the transformer, in front of it
    servelane model-server --model-class examples/iris_transformer.py:IrisTransformer --model-name sklearn-iris \\
        --predictor-host 127.0.0.1:8082 --predictor-protocol grpc-v2 --http-port 8080 --grpc-port 8083
    curl -s http://127.0.0.1:8080/v1/models/sklearn-iris:predict -d '{"instances": [{"sepal_length": 6.8,
        "sepal_width": 2.8, "petal_length": 4.8, "petal_width": 1.4}]}'
    # {"predictions":["versicolor"]}

Any predictor protocol works (``v1``, ``v2``, ``grpc-v2``). V2 clients (REST or gRPC) send the [N, 4] ``input``
tensor as they would to the predictor, and get a BYTES ``species`` output besides the predictor's outputs.
Pre- and postprocess are ``async def`` because they are cheap: a plain ``def`` would run on the model's thread
pool, which is what a hook that blocks (or computes for a while) should do.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from common.errors import InferenceError, InvalidInput
from model_server.model import Model, RequestContext
from model_server.types import InferRequest, Tensor

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
SPECIES = ("setosa", "versicolor", "virginica")


class IrisTransformer(Model):
    async def preprocess(self, payload: Any, context: RequestContext) -> Any:
        if isinstance(payload, InferRequest):
            # every output: "species" is ours, and the server picks what the client asked for after postprocess
            return replace(payload, outputs=None)
        rows = features(payload)
        if self.predictor is not None and self.predictor.protocol == "v1":
            return {"instances": rows}
        data = np.array(rows, dtype=np.float32)
        return InferRequest(self.name, [Tensor("input", "FP32", data.shape, data)])

    async def postprocess(self, result: Any, context: RequestContext) -> Any:
        if isinstance(result, dict):  # a v1 predictor: {"predictions": [class index, ...]}
            return {"predictions": species(result.get("predictions"))}
        label = result.output("label")
        if label is None:
            raise InferenceError("the predictor returned no 'label' output")
        names = species(label.data.reshape(-1).tolist())
        if context.protocol == "v1":
            return {"predictions": names}
        result.outputs.append(Tensor.from_array("species", np.array(names, dtype=np.object_).reshape(label.shape)))
        return result


def features(payload: Any) -> list[list[float]]:
    """``{"instances": [...]}`` as rows in the model's feature order. An instance is an object of named features
    (``{"sepal_length": 6.8, ...}``) or, as in KServe's own sklearn-iris example, a list of the four in order."""
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('Expected "instances": a non-empty list of {"sepal_length": ..., ...} objects')
    rows = []
    for i, instance in enumerate(instances):
        if isinstance(instance, list):
            if len(instance) != len(FEATURES):
                raise InvalidInput(f"instance {i} has {len(instance)} values; expected {len(FEATURES)}: {FEATURES}")
            values = instance
        elif isinstance(instance, dict):
            missing = [name for name in FEATURES if name not in instance]
            if missing:
                raise InvalidInput(f"instance {i} lacks {', '.join(missing)}")
            values = [instance[name] for name in FEATURES]
        else:
            raise InvalidInput(f"instance {i} is neither an object of named features nor a list of {len(FEATURES)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise InvalidInput(f"instance {i}: every feature must be a number")
        rows.append([float(v) for v in values])
    return rows


def species(labels: Any) -> list[str]:
    if not isinstance(labels, list) or not all(isinstance(v, int) and 0 <= v < len(SPECIES) for v in labels):
        raise InferenceError(f"the predictor returned unexpected labels: {str(labels)[:200]}")
    return [SPECIES[v] for v in labels]
