"""Routing-state documents for gateway tests: an iris service (transformer, a 90/10 predictor canary, explainer)
and a second service in another namespace, with endpoints the test supplies."""

from __future__ import annotations

from typing import Any

from gateway.state import RoutingState

REVISIONS = {
    "sklearn-iris-transformer-00001": ("default", "sklearn-iris", "transformer"),
    "sklearn-iris-predictor-00001": ("default", "sklearn-iris", "predictor"),
    "sklearn-iris-predictor-00002": ("default", "sklearn-iris", "predictor"),
    "sklearn-iris-explainer-00001": ("default", "sklearn-iris", "explainer"),
    "other-predictor-00001": ("prod", "other", "predictor"),
}


def endpoint(http: str, grpc: str | None = None, ready: bool = True) -> dict[str, Any]:
    return {"http": http, "grpc": grpc, "ready": ready}


def iris_document(
    endpoints: dict[str, list[dict[str, Any]]] | None = None,
    *,
    version: int = 1,
    canary: int = 10,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """The document; ``endpoints`` by revision name (a revision left out gets one endpoint at 127.0.0.1:1)."""
    endpoints = endpoints or {}
    return {
        "version": version,
        "domain": "example.com",
        "services": [
            {
                "name": "sklearn-iris", "namespace": "default", "models": ["sklearn-iris"], "entry": "transformer",
                "components": {
                    "transformer": [{"revision": "sklearn-iris-transformer-00001", "percent": 100, "tag": "latest"}],
                    "predictor": [
                        {"revision": "sklearn-iris-predictor-00001", "percent": 100 - canary, "tag": "prev"},
                        {"revision": "sklearn-iris-predictor-00002", "percent": canary, "tag": "latest"},
                    ],
                    "explainer": [{"revision": "sklearn-iris-explainer-00001", "percent": 100}],
                },
            },
            {
                "name": "other", "namespace": "prod", "models": ["other-model"],
                "components": {"predictor": [{"revision": "other-predictor-00001", "percent": 100}]},
            },
        ],
        "revisions": {
            name: {
                "namespace": ns, "service": service, "component": component, "timeout": timeout,
                "endpoints": endpoints.get(name, [endpoint("127.0.0.1:1")]),
            }
            for name, (ns, service, component) in REVISIONS.items()
        },
    }  # fmt: skip


def iris_state(**kwargs: Any) -> RoutingState:
    return RoutingState.from_dict(iris_document(**kwargs))
