"""The routing table without sockets: hosts (external, cluster-local, component, tag), the tag header, path routing
on the gateway's own names and ports, 404s, and the 90/10 split (Knative checklist items 42 and 43)."""

from __future__ import annotations

import random

import pytest

from common.errors import NotFound, Unavailable
from gateway.routing import Identity, RoutingTable, model_of_path, split_host
from gateway.state import RoutingState
from tests.gateway.documents import iris_document, iris_state

GATEWAY = Identity.of("127.0.0.1", (8080, 8081))
T1, P1, P2, E1 = (
    "sklearn-iris-transformer-00001", "sklearn-iris-predictor-00001", "sklearn-iris-predictor-00002",
    "sklearn-iris-explainer-00001",
)  # fmt: skip


@pytest.fixture
def table() -> RoutingTable:
    return RoutingTable(iris_state(canary=0), GATEWAY, rng=random.Random(7))


def where(table: RoutingTable, host: str | None, path: str = "/v1/models/sklearn-iris:predict") -> tuple[str, str]:
    destination = table.match(host, path)
    return f"{destination.namespace}/{destination.service}", destination.component


@pytest.mark.parametrize(
    "host",
    [
        "sklearn-iris.default.example.com",
        "sklearn-iris.default.example.com:80",
        "SKLEARN-IRIS.Default.Example.COM:8080",
        "sklearn-iris.default.example.com.",
        "sklearn-iris.default.svc.cluster.local",
        "sklearn-iris.default.svc",
        "sklearn-iris.default",
    ],
)
def test_service_hosts_reach_the_entry_component(table: RoutingTable, host: str) -> None:
    assert where(table, host) == ("default/sklearn-iris", "transformer")


@pytest.mark.parametrize("component", ["predictor", "transformer", "explainer"])
@pytest.mark.parametrize("suffix", ["example.com", "svc.cluster.local", "svc", ""])
def test_component_hosts(table: RoutingTable, component: str, suffix: str) -> None:
    host = f"sklearn-iris-{component}.default" + (f".{suffix}" if suffix else "")
    assert where(table, host) == ("default/sklearn-iris", component)


def test_a_service_without_transformer_enters_at_its_predictor(table: RoutingTable) -> None:
    assert where(table, "other.prod.example.com") == ("prod/other", "predictor")
    assert where(table, "other-predictor.prod.svc.cluster.local") == ("prod/other", "predictor")


def test_tag_hosts_pin_the_tagged_revision(table: RoutingTable) -> None:
    # canary=0: the split alone never picks P2, so reaching it proves the tag host pins it
    assert {table.route("latest-sklearn-iris-predictor.default.example.com", "/").name for _ in range(50)} == {P2}
    assert {table.route("prev-sklearn-iris-predictor.default.svc", "/").name for _ in range(50)} == {P1}
    assert table.route("latest-sklearn-iris.default.example.com", "/").name == T1  # entry component's tag host
    with pytest.raises(NotFound):
        table.match("prev-sklearn-iris.default.example.com", "/")  # "prev" tags a predictor, not the entry


def test_tag_header_on_a_default_route(table: RoutingTable) -> None:
    predictor = "sklearn-iris-predictor.default.example.com"
    assert {table.route(predictor, "/").name for _ in range(50)} == {P1}
    assert {table.route(predictor, "/", "latest").name for _ in range(50)} == {P2}
    assert {table.route(predictor, "/", "no-such-tag").name for _ in range(50)} == {P1}  # falls back to the split
    assert table.route("prev-sklearn-iris-predictor.default.example.com", "/", "latest").name == P1  # tag host wins


@pytest.mark.parametrize("host", [None, "", "localhost", "localhost:8080", "127.0.0.1:8081", "[::1]:8080", "::1",
                                  "example.com", "EXAMPLE.com:8080", "127.0.0.1"])  # fmt: skip
def test_own_names_route_by_model_in_the_path(table: RoutingTable, host: str | None) -> None:
    assert where(table, host, "/v1/models/sklearn-iris:predict") == ("default/sklearn-iris", "transformer")
    assert where(table, host, "/v2/models/other-model/infer") == ("prod/other", "predictor")
    assert where(table, host, "/v2/models/other-model/versions/3/infer") == ("prod/other", "predictor")
    assert where(table, host, "/v2/models/other-model") == ("prod/other", "predictor")


def test_explain_goes_to_the_explainer_when_there_is_one(table: RoutingTable) -> None:
    assert where(table, "localhost", "/v1/models/sklearn-iris:explain") == ("default/sklearn-iris", "explainer")
    assert where(table, "localhost", "/v1/models/other-model:explain") == ("prod/other", "predictor")
    # a host names its component: :explain on the predictor's host stays with the predictor
    assert where(table, "sklearn-iris-predictor.default.example.com", "/v1/models/x:explain")[1] == "predictor"


def test_component_host_wins_over_the_path(table: RoutingTable) -> None:
    """A transformer's call to its predictor through the gateway names the predictor's host and the service's
    model: it must reach the predictor, never the transformer again."""
    host = "sklearn-iris-predictor.default.example.com"
    assert where(table, host, "/v1/models/sklearn-iris:predict") == ("default/sklearn-iris", "predictor")
    assert where(table, host, "/v2/models/sklearn-iris/infer") == ("default/sklearn-iris", "predictor")


def test_bind_host_and_extra_names_are_own_names() -> None:
    identity = Identity.of("10.1.2.3", (9000,), names=("gw.internal",))
    table = RoutingTable(iris_state(), identity)
    for host in ("10.1.2.3:9000", "gw.internal", "GW.internal:9000", "localhost:9000"):
        assert table.match(host, "/v2/models/other-model/infer").service == "other"
    with pytest.raises(NotFound):
        table.match("10.9.9.9:9000", "/v2/models/other-model/infer")


def test_a_name_with_a_port_is_ours_with_that_port_only() -> None:
    # docker run -p 9000:8080: curl localhost:9000 sends Host: localhost:9000
    table = RoutingTable(iris_state(), Identity.of("0.0.0.0", (8080,), names=("localhost:9000", "Box.lan:80")))
    for host in ("localhost:9000", "LOCALHOST:9000", "box.lan:80", "localhost:8080", "localhost"):
        assert table.match(host, "/v2/models/other-model/infer").service == "other"
    for host in ("localhost:9001", "box.lan:9000", "box.lan", "127.0.0.1:9000"):
        with pytest.raises(NotFound):
            table.match(host, "/v2/models/other-model/infer")


def test_bound_to_every_address_any_ip_literal_is_ours() -> None:
    table = RoutingTable(iris_state(), Identity.of("0.0.0.0", (9000,)))
    assert table.match("10.9.9.9:9000", "/v2/models/other-model/infer").service == "other"
    assert table.match("[fe80::1]:9000", "/v2/models/other-model/infer").service == "other"
    with pytest.raises(NotFound):
        table.match("some.name:9000", "/v2/models/other-model/infer")


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("unknown.default.example.com", 'unknown host "unknown.default.example.com"'),
        ("sklearn-iris.other-ns.example.com", 'unknown host "sklearn-iris.other-ns.example.com"'),
        ("127.0.0.1:40123", 'unknown host "127.0.0.1:40123"'),  # a replica's port: an internal address
        ("localhost:22", 'unknown host "localhost:22"'),
        ("[::1]:9090", 'unknown host "[::1]:9090"'),
        ("localhost:http", 'unknown host "localhost:http"'),
        ("10.0.0.7", 'unknown host "10.0.0.7"'),
        ("sklearn-iris-predictor-00001.default.example.com", 'unknown host "sklearn-iris-predictor-00001.default'),
    ],
)
def test_unknown_and_internal_hosts_match_nothing(table: RoutingTable, host: str, message: str) -> None:
    with pytest.raises(NotFound) as raised:
        table.match(host, "/v1/models/sklearn-iris:predict")
    assert raised.value.message.startswith(message)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/models/nope:predict", 'unknown model "nope"'),
        ("/v2/models/nope/infer", 'unknown model "nope"'),
        ("/", "no model in path '/'"),
        ("/v2/models/", "no model in path '/v2/models/'"),
        ("/v2/repository/index", "no model in path"),
    ],
)
def test_unknown_models_on_own_names(table: RoutingTable, path: str, message: str) -> None:
    with pytest.raises(NotFound) as raised:
        table.match("localhost:8080", path)
    assert raised.value.message.startswith(message)


def test_ninety_ten_split_over_ten_thousand_picks() -> None:
    table = RoutingTable(iris_state(canary=10), GATEWAY, rng=random.Random(42))
    destination = table.match("sklearn-iris-predictor.default.example.com", "/")
    picks = [table.pick(destination).name for _ in range(10_000)]
    assert abs(picks.count(P2) / 100 - 10) <= 2
    assert picks.count(P1) + picks.count(P2) == 10_000


def test_a_zero_percent_revision_gets_nothing_but_stays_reachable_by_tag() -> None:
    table = RoutingTable(iris_state(canary=0), GATEWAY, rng=random.Random(1))
    destination = table.match("sklearn-iris-predictor.default.example.com", "/")
    assert destination.split == ((100, P1),)
    assert table.pick(destination, "latest").name == P2


def test_a_component_with_no_revision_is_unavailable() -> None:
    doc = iris_document()
    doc["services"][1]["components"]["predictor"] = []
    table = RoutingTable(RoutingState.from_dict(doc), GATEWAY)
    with pytest.raises(Unavailable) as raised:
        table.route("other.prod.example.com", "/")
    assert raised.value.message == "no revision takes traffic for predictor of prod/other"


def test_domain_override_and_conflicts_are_reported() -> None:
    doc = iris_document()
    doc["services"].append({"name": "sklearn-iris-predictor", "namespace": "default", "models": ["sklearn-iris"],
                            "components": {"predictor": [{"revision": "other-predictor-00001"}]}})  # fmt: skip
    table = RoutingTable(RoutingState.from_dict(doc), GATEWAY, domain="serve.local")
    assert table.match("other.prod.serve.local", "/").service == "other"
    with pytest.raises(NotFound):
        table.match("other.prod.example.com", "/")
    # the service named sklearn-iris-predictor keeps its own host; sklearn-iris's component host yields to it
    assert table.match("sklearn-iris-predictor.default.serve.local", "/").service == "sklearn-iris-predictor"
    assert any("sklearn-iris-predictor.default.serve.local" in c for c in table.conflicts)
    assert any(c.startswith("model sklearn-iris already routes") for c in table.conflicts)
    assert table.match("serve.local", "/v2/models/sklearn-iris/infer").service == "sklearn-iris"  # first one wins
    assert repr(table).startswith("<RoutingTable v1 serve.local hosts=")


@pytest.mark.parametrize(
    ("host", "parts"),
    [
        ("a.b.c:8080", ("a.b.c", 8080)), ("A.B.C", ("a.b.c", None)), ("[::1]:80", ("::1", 80)),
        ("[::1]", ("::1", None)), ("::1", ("::1", None)), ("a.b.:1", ("a.b", 1)), ("a:x", ("a", -1)),
        (None, ("localhost", None)),
    ],
)  # fmt: skip
def test_split_host(host: str | None, parts: tuple[str, int | None]) -> None:
    assert split_host(host) == parts


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("/v1/models/iris:predict", ("iris", "predict")), ("/v1/models/iris", ("iris", "")),
        ("/v1/models/iris:explain", ("iris", "explain")), ("/v2/models/iris/versions/2/infer", ("iris", "")),
        ("/v2/models/iris", ("iris", "")), ("/v2/health/ready", (None, "")), ("/v1/models/:predict", (None, "predict")),
    ],
)  # fmt: skip
def test_model_of_path(path: str, parts: tuple[str | None, str]) -> None:
    assert model_of_path(path) == parts


def test_matches_are_remembered_within_bounds(table: RoutingTable) -> None:
    from gateway import routing

    first = table.match("sklearn-iris.default.example.com", "/v1/models/sklearn-iris:predict")
    assert table.match("sklearn-iris.default.example.com", "/v1/models/sklearn-iris:predict") is first
    for n in range(routing.MATCHES_KEPT + 10):  # a client sending many distinct paths does not grow it for ever
        table.match(None, f"/v1/models/sklearn-iris:predict?n={n}")
    assert len(table._matched) <= routing.MATCHES_KEPT
    with pytest.raises(NotFound):  # a miss is not remembered, and still a 404
        table.match("nowhere.example.com", "/")
    assert ("nowhere.example.com", "/") not in table._matched
