"""The REST edge's routing table on its own: what a path and method reach, and that remembered routes stay bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_server import rest
from model_server.config import ModelServerConfig
from model_server.rest import RestEdge


@pytest.fixture
def edge(tmp_path: Path) -> RestEdge:
    return RestEdge(None, ModelServerConfig(model_repository=tmp_path))  # type: ignore[arg-type]  # routing only


def test_routes_give_handler_parameters_and_the_protocol_counted(edge: RestEdge):
    handler, params, counted = edge._route("POST", "/v2/models/iris/versions/3/infer")
    assert handler == edge.v2_infer and params == {"name": "iris", "version": "3"} and counted == "v2"
    handler, params, counted = edge._route("POST", "/v1/models/iris:predict")
    assert handler == edge.v1_predict and params == {"name": "iris"} and counted == "v1"
    params["name"] = "changed by a handler"
    assert edge._route("POST", "/v1/models/iris:predict")[1] == {"name": "iris"}  # the remembered one is intact
    assert edge._route("HEAD", "/v2/health/ready")[0] == edge.ready


def test_unrouted_requests_are_404_or_405_and_not_remembered(edge: RestEdge):
    with pytest.raises(rest._NoRoute) as raised:
        edge._route("GET", "/v1/models/iris:predict")
    assert raised.value.response.status == 405 and ("Allow", "POST") in raised.value.response.headers
    with pytest.raises(rest._NoRoute) as raised:
        edge._route("GET", "/nowhere")
    assert raised.value.response.status == 404
    assert edge._matched == {}


def test_remembered_routes_stay_bounded(edge: RestEdge, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(rest, "ROUTES_KEPT", 8)
    for i in range(20):
        assert edge._route("POST", f"/v1/models/m{i}:predict")[1] == {"name": f"m{i}"}
        assert len(edge._matched) <= 8
