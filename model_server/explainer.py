"""Occlusion, a model-agnostic attribution for tabular models, and the explainer role that applies it to a predictor.

For an instance ``x`` (one row of F features), a baseline ``b`` and a model ``f`` with K outputs per row::

    attribution[i][k] = f(x)[k] - f(x with feature i replaced by b[i])[k]

how much each output moves when the feature is taken away. For a linear model ``f(x) = x·W + c`` this is exactly
``W[i][k] * (x[i] - b[i])``; for any other model it is the effect of each feature alone, at ``x``. The N
instances of a request and their N·F perturbations go to the model in one call of N·(F+1) rows.

:class:`OcclusionExplainer` is the ``--explainer`` role: ``:explain`` calls the predictor (``--predictor-host``,
any protocol) and ``:predict`` / V2 ``infer`` forward to it. An onnxruntime model with ``explainer:`` in its
config.yaml answers ``:explain`` in-process the same way (see ``OnnxModel.explain``). The answer, per instance::

    {"explanations": [{"method": "occlusion", "output": "probabilities", "baseline": [0, 0, 0, 0],
                       "prediction": [p0, p1, p2], "attributions": [[a00, a01, a02], ...one row per feature]}]}
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from common.errors import InferenceError, InvalidInput, Unsupported
from model_server.datatypes import numpy_dtype
from model_server.model import Model, RequestContext
from model_server.model_config import ExplainerConfig
from model_server.types import InferRequest, ModelMetadata, RequestedOutput, Tensor, TensorSpec

MAX_ROWS = 65536  # instances × (features + 1) one :explain may send the model
_FLOAT = ("FP16", "FP32", "FP64", "BF16")

Predict = Callable[[np.ndarray], Awaitable[np.ndarray]]  # rows [R, F] -> outputs [R, ...]


async def occlusion(rows: np.ndarray, baseline: np.ndarray, predict: Predict) -> tuple[np.ndarray, np.ndarray]:
    """Predictions [N, K] of the instances, and attributions [N, F, K]; one ``predict`` call of N·(F+1) rows."""
    n, f = rows.shape
    batch = np.repeat(rows[:, None, :], f + 1, axis=1)  # [N, F+1, F]: row 0 as is, row i+1 without feature i
    features = np.arange(f)
    batch[:, features + 1, features] = baseline
    out = np.asarray(await predict(batch.reshape(n * (f + 1), f)))
    if out.shape[:1] != (n * (f + 1),):
        raise InferenceError(f"the model returned {out.shape[:1]} rows for {n * (f + 1)}")
    out = out.reshape(n, f + 1, -1).astype(np.float64)
    predictions = out[:, 0, :]
    return predictions, predictions[:, None, :] - out[:, 1:, :]


def instances(payload: Any) -> np.ndarray:
    """The rows of a V1 body (``instances``, or ``inputs`` as a list of rows) as a float64 [N, F] array."""
    if not isinstance(payload, dict):
        raise InvalidInput('Expected a JSON object with "instances"')
    rows = payload.get("inputs", payload.get("instances"))
    if not isinstance(rows, list) or not rows:
        raise InvalidInput('Expected "instances" to be a non-empty list of rows of numbers')
    try:
        array = np.array(rows, dtype=np.float64)
    except (ValueError, TypeError):
        raise InvalidInput("every instance must be a list of numbers, all of the same length") from None
    if array.ndim != 2 or array.shape[1] == 0:
        raise InvalidInput(f"instances must be rows of features, got shape {list(array.shape)}")
    if array.shape[0] * (array.shape[1] + 1) > MAX_ROWS:
        raise InvalidInput(f"explaining {array.shape[0]} instances of {array.shape[1]} features takes more than "
                           f"{MAX_ROWS} model rows; send fewer instances")
    return array


async def explain(payload: Any, config: ExplainerConfig, output: str, predict: Predict) -> dict[str, Any]:
    """The ``:explain`` answer for a V1 body."""
    rows = instances(payload)
    features = rows.shape[1]
    if config.baseline is None:
        baseline = np.zeros(features)
    elif len(config.baseline) == features:
        baseline = np.array(config.baseline, dtype=np.float64)
    else:
        raise InvalidInput(f"the instances have {features} features, the explainer's baseline {len(config.baseline)}")
    predictions, attributions = await occlusion(rows, baseline, predict)
    common = {"method": "occlusion", "output": output, "baseline": baseline.tolist()}
    return {"explanations": [
        {**common, "prediction": p.tolist(), "attributions": a.tolist()} for p, a in zip(predictions, attributions)
    ]}


def explained_output(outputs: tuple[TensorSpec, ...], wanted: str | None, model: str) -> TensorSpec:
    """The output to attribute: the configured one, else the first floating-point output, else the first."""
    if not outputs:
        raise InferenceError(f"model {model} declares no outputs to explain")
    if wanted is not None:
        for spec in outputs:
            if spec.name == wanted:
                return spec
        raise InferenceError(f"model {model} has no output {wanted!r} to explain")
    return next((spec for spec in outputs if spec.datatype in _FLOAT), outputs[0])


def single_input(metadata: ModelMetadata) -> TensorSpec:
    if len(metadata.inputs) != 1:
        raise Unsupported(f"the occlusion explainer needs a model with one input; {metadata.name} has "
                          f"{len(metadata.inputs)}")
    return metadata.inputs[0]


class OcclusionExplainer(Model):
    """The ``--explainer`` role: explains the predictor's model of the same name; ``predict`` forwards to it."""

    def __init__(self, name: str, version: str = "1", *, instances: int = 1) -> None:
        super().__init__(name, version, instances=instances)
        self._target: tuple[TensorSpec | None, str] | None = None  # (input, output) of the predictor's model

    def load(self) -> None:
        if self.predictor is None:
            raise ValueError("the explainer needs --predictor-host")
        self.ready = True

    async def explain(self, payload: Any, context: RequestContext) -> Any:
        assert self.predictor is not None
        config = self.config.explainer or ExplainerConfig()
        tensor, output = await self._resolve(config)
        headers = context.headers
        predictor = self.predictor

        async def predict(rows: np.ndarray) -> np.ndarray:
            if tensor is None:  # v1: the predictions are the output
                answer = await predictor.predict_v1(self.name, {"instances": rows.tolist()}, headers)
                return np.asarray(answer.get("predictions") if isinstance(answer, dict) else None, dtype=np.float64)
            data = rows.astype(numpy_dtype(tensor.datatype))
            request = InferRequest(self.name, [Tensor(tensor.name, tensor.datatype, data.shape, data)],
                                   outputs=[RequestedOutput(output)])
            response = await predictor.infer(request, headers)
            result = response.output(output)
            if result is None:
                raise InferenceError(f"the predictor's answer has no output {output!r}")
            return result.data

        return await explain(payload, config, output, predict)

    async def _resolve(self, config: ExplainerConfig) -> tuple[TensorSpec | None, str]:
        """The predictor's input and the output to explain, from its metadata (asked once; v1 has none)."""
        if self._target is None:
            assert self.predictor is not None
            metadata = await self.predictor.metadata(self.name)
            if metadata is None:
                self._target = (None, config.output or "predictions")
            else:
                output = explained_output(metadata.outputs, config.output, self.name)
                self._target = (single_input(metadata), output.name)
        return self._target
