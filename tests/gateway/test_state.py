"""The routing-state document without sockets: what the controller publishes round-trips, a routes file written as
block-style YAML loads, and a misspelt key at any level is refused with its path instead of falling back to a
default (``redy: false`` would keep a replica in service)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.errors import InvalidInput
from gateway.sources import FileSource, parse_document
from gateway.state import Endpoint, Revision, RoutingState, Service, Target
from tests.gateway.documents import iris_document

P1 = "sklearn-iris-predictor-00001"


def published() -> RoutingState:
    """A state built as the controller builds it (controller.Controller._state): every field set, some to None."""
    revisions = {
        "iris-transformer-00001": Revision("iris-transformer-00001", "ml", "iris", "transformer",
                                           (Endpoint("127.0.0.1:4001"),), 0, 60.0),
        "iris-predictor-00001": Revision("iris-predictor-00001", "ml", "iris", "predictor",
                                         (Endpoint("127.0.0.1:4002", "127.0.0.1:4003", ready=False),), 4, 300.0),
        "iris-predictor-00002": Revision("iris-predictor-00002", "ml", "iris", "predictor",
                                         (Endpoint("127.0.0.1:4004", "127.0.0.1:4005"), Endpoint("127.0.0.1:4006")),
                                         1, 12.5),
        "iris-explainer-00001": Revision("iris-explainer-00001", "ml", "iris", "explainer", (), 0, 300.0),
    }
    components = {
        "transformer": (Target("iris-transformer-00001", 100, "latest"),),
        "predictor": (Target("iris-predictor-00001", 80, "prev"), Target("iris-predictor-00002", 20, "latest")),
        "explainer": (Target("iris-explainer-00001", 100, None),),
    }
    return RoutingState(42, "serve.local", (Service("iris", "ml", "transformer", components, ("iris-v2",)),), revisions)


@pytest.mark.parametrize(
    "encode",
    [
        lambda doc: doc,
        lambda doc: json.loads(json.dumps(doc)),  # the controller's admin API: json_response(state.to_dict())
        lambda doc: yaml.safe_load(yaml.safe_dump(doc, default_flow_style=False, sort_keys=False)),
    ],
    ids=["dict", "json", "block-yaml"],
)
def test_what_the_controller_publishes_round_trips(encode: Callable[[dict[str, Any]], Any]) -> None:
    for state in (published(), RoutingState(), RoutingState.from_dict(iris_document(canary=30))):
        assert RoutingState.from_dict(encode(state.to_dict())) == state


def test_a_routes_file_in_block_style_yaml_loads(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        """\
# hand-written, as an operator behind another orchestrator would
version: 3
domain: Serve.Local
services:
  - name: iris
    namespace: ml
    models:
      - iris-v2
    components:
      predictor:
        - revision: p1
          percent: 90
          tag: prev
        - revision: p2
          percent: 10
          tag: latest
revisions:
  p1:
    namespace: ml
    service: iris
    component: predictor
    container_concurrency: 2
    timeout: 30
    endpoints:
      - http: 127.0.0.1:4001
        grpc: 127.0.0.1:4002
      - http: 127.0.0.1:4003
        ready: false
  p2:
    namespace: ml
    service: iris
    endpoints:
      - {http: "127.0.0.1:4004"}
"""
    )
    state = FileSource(routes, lambda state: None).load()
    assert (state.version, state.domain) == (3, "serve.local")
    (service,) = state.services
    assert (service.name, service.namespace, service.entry, service.models) == ("iris", "ml", "predictor", ("iris-v2",))
    assert service.components == {"predictor": (Target("p1", 90, "prev"), Target("p2", 10, "latest"))}
    assert state.revisions["p1"] == Revision(
        "p1", "ml", "iris", "predictor",
        (Endpoint("127.0.0.1:4001", "127.0.0.1:4002"), Endpoint("127.0.0.1:4003", None, False)), 2, 30.0,
    )  # fmt: skip
    assert state.revisions["p1"].ready_endpoints == (Endpoint("127.0.0.1:4001", "127.0.0.1:4002"),)
    assert state.revisions["p2"] == Revision("p2", "ml", "iris", "predictor", (Endpoint("127.0.0.1:4004"),))


def _set(path: tuple[Any, ...], key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        for step in path:
            doc = doc[step]
        doc[key] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set((), "domian", "serve.local"),
         "domian: unknown key; expected one of domain, revisions, services, version"),
        (_set(("services", 1), "componentz", {}),
         "services[1].componentz: unknown key; expected one of components, entry, models, name, namespace"),
        (_set(("services", 0, "components", "predictor", 1), "tagg", "canary"),
         "services[0].components.predictor[1].tagg: unknown key; expected one of percent, revision, tag"),
        (_set(("revisions", P1), "timout", 5),
         f"revisions.{P1}.timout: unknown key; expected one of component, container_concurrency, endpoints, "
         "namespace, service, timeout"),
        (_set(("revisions", P1, "endpoints", 0), "redy", False),
         f"revisions.{P1}.endpoints[0].redy: unknown key; expected one of grpc, http, ready"),
        (_set(("revisions", P1, "endpoints", 0), "ready", "false"),
         f"revisions.{P1}.endpoints[0].ready must be true or false, got 'false'"),
        (_set(("revisions", P1, "endpoints", 0), "grpc", 8081),
         f"revisions.{P1}.endpoints[0].grpc must be a host:port string, or null"),
        (_set(("revisions", P1), "timeout", True), f"revisions.{P1}.timeout must be a positive number of seconds"),
        (_set(("revisions", P1), "container_concurrency", True),
         f"revisions.{P1}.container_concurrency must be a non-negative integer"),
    ],
    ids=["domain", "components", "tag", "timeout", "ready", "ready-string", "grpc-port", "timeout-bool", "cc-bool"],
)  # fmt: skip
def test_a_misspelt_key_or_a_quoted_ready_is_refused_with_its_path(change, message: str) -> None:
    doc = iris_document()
    change(doc)
    with pytest.raises(InvalidInput) as raised:
        RoutingState.from_dict(doc)
    assert raised.value.message == message
    assert raised.value.http_status == 400


def test_a_routes_file_with_a_misspelt_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "revisions:\n"
        "  p1:\n"
        "    endpoints:\n"
        "      - http: 127.0.0.1:4001\n"
        "        redy: false\n"
    )  # fmt: skip
    with pytest.raises(InvalidInput) as raised:
        FileSource(routes, lambda state: None).load()
    assert raised.value.message == (
        f"routes file {routes}: revisions.p1.endpoints[0].redy: unknown key; expected one of grpc, http, ready"
    )
    assert parse_document(routes.read_text().replace("redy", "ready")).revisions["p1"].ready_endpoints == ()
