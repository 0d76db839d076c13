"""The occlusion explainer: attributions checked against what a linear model's are by hand (W[i, k] * (x[i] - b[i])),
in-process (an ONNX model with ``explainer:``) and as the explainer role calling a predictor over every protocol."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from model_server import explainer
from model_server.model_config import ExplainerConfig, ModelConfig
from tests.harness import ServiceProcess, free_port
from tests.model_server.builders import C, W, build_linear

X = np.array([[1.0, 2.0, 3.0], [-0.5, 0.0, 4.0]])
BASELINE = np.array([1.0, 0.0, -1.0])


def by_hand(x: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prediction x·W + C, and attribution[n, i, k] = W[i, k] * (x[n, i] - b[i])."""
    return x @ W + C, W[None, :, :] * (x - baseline)[:, :, None]


async def test_occlusion_of_a_linear_function_is_weight_times_distance_from_baseline():
    async def linear(rows: np.ndarray) -> np.ndarray:
        return rows @ W + C

    predictions, attributions = await explainer.occlusion(X, BASELINE, linear)
    want_predictions, want_attributions = by_hand(X, BASELINE)
    np.testing.assert_allclose(predictions, want_predictions, rtol=1e-6)
    np.testing.assert_allclose(attributions, want_attributions, rtol=1e-6)


async def test_occlusion_gives_each_feature_its_effect_alone_and_calls_the_model_once():
    calls = []

    async def product(rows: np.ndarray) -> np.ndarray:  # f(x) = x0 * x1: no feature matters alone at b = 0
        calls.append(rows.shape)
        return rows[:, 0] * rows[:, 1]

    _, attributions = await explainer.occlusion(np.array([[2.0, 3.0]]), np.zeros(2), product)
    assert attributions[0, :, 0].tolist() == [6.0, 6.0]  # 2·3 − 0·3 and 2·3 − 2·0
    assert calls == [(3, 2)]  # the instance and its two perturbations, in one call


def check(answer: dict, baseline: np.ndarray = BASELINE, output: str = "y") -> None:
    want_predictions, want_attributions = by_hand(X, baseline)
    assert len(answer["explanations"]) == len(X)
    for explanation, prediction, attribution in zip(answer["explanations"], want_predictions, want_attributions):
        assert (explanation["method"], explanation["output"]) == ("occlusion", output)
        assert explanation["baseline"] == baseline.tolist()
        np.testing.assert_allclose(explanation["prediction"], prediction, rtol=1e-5)
        np.testing.assert_allclose(explanation["attributions"], attribution, rtol=1e-5, atol=1e-5)


async def post(port: int, path: str, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}{path}", json=body) as response:
            return response.status, await response.json()


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    build_linear(root / "linear" / "1" / "model.onnx")
    (root / "linear" / "config.yaml").write_text("v1_output: y\nexplainer:\n  baseline: [1, 0, -1]\n")
    build_linear(root / "plain" / "1" / "model.onnx")
    return root


async def test_an_onnx_model_with_an_explainer_answers_explain_in_process(start_model_server, repository):
    server = await start_model_server(repository)
    status, answer = await post(server.http_port, "/v1/models/linear:explain", {"instances": X.tolist()})
    assert status == 200, answer
    check(answer)
    status, answer = await post(server.http_port, "/v1/models/plain:explain", {"instances": X.tolist()})
    assert (status, answer) == (501, {"error": "Model plain has no explainer."})
    status, answer = await post(server.http_port, "/v1/models/linear:explain", {"instances": [[1, 2]]})
    assert (status, answer) == (400, {"error": "the instances have 2 features, the explainer's baseline 3"})
    status, answer = await post(server.http_port, "/v1/models/linear:explain", {"instances": [[1, "a", 3]]})
    assert status == 400 and "list of numbers" in answer["error"]


@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc-v2"])
async def test_the_explainer_role_explains_the_predictors_model(start_model_server, repository, protocol):
    predictor = await start_model_server(repository)
    port = predictor.grpc_port if protocol == "grpc-v2" else predictor.http_port
    explaining = await start_model_server(
        model_name="linear", explainer=True, predictor_host=f"127.0.0.1:{port}", predictor_protocol=protocol,
        model_defaults=ModelConfig(explainer=ExplainerConfig(baseline=(0.0, 0.0, 0.0))),
    )
    status, answer = await post(explaining.http_port, "/v1/models/linear:explain", {"instances": X.tolist()})
    assert status == 200, answer
    # y: over V2 the first float output (label comes first); over v1 the predictions, which v1_output makes y
    check(answer, baseline=np.zeros(3), output="predictions" if protocol == "v1" else "y")
    if protocol == "v1":
        status, answer = await post(explaining.http_port, "/v1/models/linear:predict", {"instances": X.tolist()})
        np.testing.assert_allclose(answer["predictions"], X @ W + C, rtol=1e-5)  # predict forwards
    else:
        body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": X.ravel().tolist()}]}
        status, answer = await post(explaining.http_port, "/v2/models/linear/infer", body)
        assert [o["name"] for o in answer["outputs"]] == ["label", "y"]  # predict forwards


async def test_the_explainer_role_as_a_process_from_its_flags(start_model_server, repository):
    """``servelane model-server --explainer --predictor-host ...`` as users start it: the flags alone make the role."""
    predictor = await start_model_server(repository)
    port = free_port()
    process = ServiceProcess(
        "servelane", "model-server", "--explainer", "--model-name", "linear", "--explainer-baseline", "1,0,-1",
        "--predictor-host", f"127.0.0.1:{predictor.grpc_port}", "--predictor-protocol", "grpc-v2",
        "--http-port", str(port), "--grpc-port", "-1", "--log-level", "WARNING",
    ).start()
    try:
        await asyncio.to_thread(process.wait_http, f"http://127.0.0.1:{port}/v2/health/ready")
        status, answer = await post(port, "/v1/models/linear:explain", {"instances": X.tolist()})
        assert status == 200, answer
        check(answer, output="y")
    finally:
        assert process.stop() == 0
