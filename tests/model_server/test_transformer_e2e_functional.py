"""The iris transformer (examples/iris_transformer.py) in front of the iris predictor, both as real processes:
named features in and species out over every predictor protocol, V2 and gRPC clients, the predictor's errors
passed back with its status and message, and readiness that follows the predictor's."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import IRIS_REPOSITORY
from tests.model_server.served import Served

pytestmark = pytest.mark.timeout(90)

TRANSFORMER = "examples/iris_transformer.py:IrisTransformer"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.8, 2.8, 4.8, 1.4], [7.7, 3.0, 6.1, 2.3]]
NAMED = [dict(zip(("sepal_length", "sepal_width", "petal_length", "petal_width"), row)) for row in ROWS]
SPECIES = ["setosa", "versicolor", "virginica"]


def predictor_address(predictor: Served, protocol: str) -> str:
    return f"127.0.0.1:{predictor.grpc if protocol == 'grpc-v2' else predictor.http}"


@pytest.fixture(scope="module")
def predictor() -> Iterator[Served]:
    served = Served("--model-repository", str(IRIS_REPOSITORY)).wait()
    yield served
    assert served.proc.stop() == 0


def start_transformer(predictor: Served, protocol: str, *extra: str) -> Served:
    return Served("--model-class", TRANSFORMER, "--model-name", "sklearn-iris", "--predictor-health-check",
                  "--predictor-host", predictor_address(predictor, protocol), "--predictor-protocol", protocol,
                  *extra).wait()


@pytest.fixture(params=["v1", "v2", "grpc-v2"])
def transformer(request, predictor: Served) -> Iterator[Served]:
    served = start_transformer(predictor, request.param)
    yield served
    assert served.proc.stop() == 0


@pytest.fixture(params=["v2", "grpc-v2"])
def v2_transformer(request, predictor: Served) -> Iterator[Served]:
    """A transformer whose predictor speaks V2, so that V2 and gRPC clients can use it too."""
    served = start_transformer(predictor, request.param)
    yield served
    assert served.proc.stop() == 0


async def test_named_features_in_species_out(transformer: Served):
    async with aiohttp.ClientSession() as http:
        url = transformer.url("/v1/models/sklearn-iris:predict")
        async with http.post(url, json={"instances": NAMED}, headers={"x-request-id": "e2e-1"}) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == {"predictions": SPECIES}
            assert response.headers["x-request-id"] == "e2e-1"
        async with http.post(url, json={"instances": [{"sepal_length": 1.0}]}) as response:
            assert response.status == 400  # the transformer's own validation
            assert await response.json() == {"error": "instance 0 lacks sepal_width, petal_length, petal_width"}
        kserve_example = {"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}  # KServe's own, unchanged
        async with http.post(url, json=kserve_example) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == {"predictions": ["versicolor", "versicolor"]}
        async with http.post(url, json={"instances": [[6.8, 2.8]]}) as response:
            assert response.status == 400
            assert "instance 0 has 2 values; expected 4" in (await response.json())["error"]


async def test_v2_and_grpc_clients_get_species_beside_the_predictor_outputs(v2_transformer: Served):
    transformer = v2_transformer
    x = {"name": "input", "shape": [3, 4], "datatype": "FP32", "data": [v for row in ROWS for v in row]}
    async with aiohttp.ClientSession() as http:
        url = transformer.url("/v2/models/sklearn-iris/infer")
        async with http.post(url, json={"inputs": [x], "outputs": [{"name": "species"}, {"name": "label"}]}) as r:
            body = await r.json()
            assert r.status == 200, body
        assert [(o["name"], o["data"]) for o in body["outputs"]] == [("species", SPECIES), ("label", [0, 1, 2])]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{transformer.grpc}")
    try:
        tensor = grpcclient.InferInput("input", [3, 4], "FP32")
        tensor.set_data_from_numpy(np.array(ROWS, dtype=np.float32))
        result = await client.infer("sklearn-iris", [tensor])
        assert result.as_numpy("species").tolist() == [s.encode() for s in SPECIES]
        assert result.as_numpy("probabilities").shape == (3, 3)
    finally:
        await client.close()


async def test_the_predictors_error_comes_back_with_its_status_and_message(v2_transformer: Served):
    transformer = v2_transformer
    bad = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(transformer.url("/v2/models/sklearn-iris/infer"), json=bad) as response:
            assert response.status == 400
            assert await response.json() == {
                "error": "input 'input' has shape [1, 3], model 'sklearn-iris' expects [-1, 4]"}
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{transformer.grpc}")
    try:
        tensor = grpcclient.InferInput("input", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32))
        with pytest.raises(InferenceServerException) as raised:
            await client.infer("sklearn-iris", [tensor])
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "model 'sklearn-iris' expects [-1, 4]" in raised.value.message()
    finally:
        await client.close()


@pytest.mark.parametrize("protocol, status", [("v2", 502), ("grpc-v2", 503)])
async def test_a_predictor_that_goes_away_makes_the_transformer_unready(protocol: str, status: int):
    predictor = Served("--model-repository", str(IRIS_REPOSITORY)).wait()
    transformer = start_transformer(predictor, protocol, "--predictor-timeout", "5")
    try:
        assert predictor.proc.stop() == 0
        async with aiohttp.ClientSession() as http:
            async with http.get(transformer.url("/v2/health/ready")) as response:
                assert response.status == 503
            async with http.get(transformer.url("/v2/models/sklearn-iris/ready")) as response:
                assert response.status == 503
            async with http.post(transformer.url("/v1/models/sklearn-iris:predict"),
                                 json={"instances": NAMED[:1]}) as response:
                assert response.status == status  # no connection: 502 over REST; gRPC's own UNAVAILABLE: 503
                assert "error" in await response.json()
    finally:
        assert transformer.proc.stop() == 0
