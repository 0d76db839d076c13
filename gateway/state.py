"""The routing state: what the controller publishes and the gateway routes by. One versioned JSON document.

Owned here because the gateway is what reads it; the controller builds it with these same types and serves
``to_dict()`` on its admin API, and a gateway run behind another orchestrator reads it from a static YAML file.

The document, as JSON (or YAML)::

    {
      "version": 7,                        # bumped by the publisher on every change; a gateway applies newer only
      "domain": "example.com",
      "services": [
        {
          "name": "sklearn-iris", "namespace": "default",
          "models": ["sklearn-iris"],      # model names whose /v1|/v2 paths route here without a Host header
          "entry": "transformer",          # the component the service's own host reaches
          "components": {
            "transformer": [{"revision": "sklearn-iris-transformer-00001", "percent": 100, "tag": "latest"}],
            "predictor": [
              {"revision": "sklearn-iris-predictor-00001", "percent": 90, "tag": "prev"},
              {"revision": "sklearn-iris-predictor-00002", "percent": 10, "tag": "latest"}
            ]
          }
        }
      ],
      "revisions": {
        "sklearn-iris-predictor-00002": {
          "namespace": "default", "service": "sklearn-iris", "component": "predictor",
          "container_concurrency": 0, "timeout": 300.0,
          "endpoints": [{"http": "127.0.0.1:40123", "grpc": "127.0.0.1:40124", "ready": true}]
        }
      }
    }

Every key is one of those above: a misspelt one (``redy: false``) is refused, naming its path, rather than left to
fall back to the default it was meant to override. That holds for the controller's documents too, so a gateway
and its controller must know the same keys: a key added later needs a format version beside it (the Kubernetes
backend's rolling upgrades), or an older gateway skips every state that carries it.

Endpoints are replica queue-proxies (``host:port``). They only ever come from this document, never from a request.
A revision with no ready endpoint is where the activator will come in (a later issue); until then the gateway
answers 503 for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.errors import InvalidInput

COMPONENTS = ("predictor", "transformer", "explainer")
# the keys each level of the document may have: exactly what the to_dict() methods below write
STATE_KEYS = ("version", "domain", "services", "revisions")
SERVICE_KEYS = ("name", "namespace", "models", "entry", "components")
TARGET_KEYS = ("revision", "percent", "tag")
REVISION_KEYS = ("namespace", "service", "component", "container_concurrency", "timeout", "endpoints")
ENDPOINT_KEYS = ("http", "grpc", "ready")


@dataclass(frozen=True, slots=True)
class Endpoint:
    http: str  # host:port of the replica's queue-proxy
    grpc: str | None = None  # host:port of its gRPC port, if it has one
    ready: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"http": self.http, "grpc": self.grpc, "ready": self.ready}


@dataclass(frozen=True, slots=True)
class Revision:
    name: str
    namespace: str
    service: str
    component: str
    endpoints: tuple[Endpoint, ...] = ()
    container_concurrency: int = 0  # 0: unlimited
    timeout: float = 300.0  # seconds; Knative's revision default

    @property
    def ready_endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.ready)

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "service": self.service,
            "component": self.component,
            "container_concurrency": self.container_concurrency,
            "timeout": self.timeout,
            "endpoints": [e.to_dict() for e in self.endpoints],
        }


@dataclass(frozen=True, slots=True)
class Target:
    revision: str
    percent: int
    tag: str | None = None  # KServe tags the newest revision "latest" and the one before it "prev"

    def to_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "percent": self.percent, "tag": self.tag}


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    entry: str
    components: Mapping[str, tuple[Target, ...]]
    models: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "models": list(self.models),
            "entry": self.entry,
            "components": {c: [t.to_dict() for t in targets] for c, targets in self.components.items()},
        }


@dataclass(frozen=True, slots=True)
class RoutingState:
    version: int = 0
    domain: str = "example.com"
    services: tuple[Service, ...] = ()
    revisions: Mapping[str, Revision] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "domain": self.domain,
            "services": [s.to_dict() for s in self.services],
            "revisions": {name: r.to_dict() for name, r in self.revisions.items()},
        }

    @classmethod
    def from_dict(cls, doc: Any) -> RoutingState:
        """Parse and check a document; :class:`InvalidInput` names the first thing wrong with it."""
        doc = _mapping(doc, "", STATE_KEYS)  # "": the top level, whose keys' paths are their bare names
        revisions = {name: _revision(name, r) for name, r in _mapping(doc.get("revisions", {}), "revisions").items()}
        services = tuple(_service(i, s, revisions) for i, s in enumerate(_list(doc.get("services", []), "services")))
        seen: set[tuple[str, str]] = set()
        for s in services:
            if (s.name, s.namespace) in seen:
                raise InvalidInput(f"services: {s.namespace}/{s.name} appears twice")
            seen.add((s.name, s.namespace))
        version = doc.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise InvalidInput("version must be a non-negative integer")
        domain = doc.get("domain", "example.com")
        if not isinstance(domain, str) or not domain:
            raise InvalidInput("domain must be a non-empty string")
        return cls(version, domain.lower(), services, revisions)


def _service(index: int, doc: Any, revisions: Mapping[str, Revision]) -> Service:
    where = f"services[{index}]"
    doc = _mapping(doc, where, SERVICE_KEYS)
    name, namespace = _str(doc, "name", where), doc.get("namespace", "default")
    components: dict[str, tuple[Target, ...]] = {}
    for component, targets in _mapping(doc.get("components", {}), f"{where}.components").items():
        if component not in COMPONENTS:
            raise InvalidInput(f"{where}.components: unknown component {component!r}; one of {', '.join(COMPONENTS)}")
        parsed = tuple(
            _target(f"{where}.components.{component}[{i}]", t, revisions)
            for i, t in enumerate(_list(targets, f"{where}.components.{component}"))
        )
        total = sum(t.percent for t in parsed)
        if parsed and total != 100:
            raise InvalidInput(f"{where}.components.{component}: percents add up to {total}, not 100")
        components[component] = parsed
    entry = doc.get("entry", "transformer" if "transformer" in components else "predictor")
    if entry not in components:
        raise InvalidInput(f"{where}.entry: {entry!r} is not one of its components")
    models = tuple(_list(doc.get("models", [name]), f"{where}.models"))
    if not all(isinstance(m, str) and m for m in models):
        raise InvalidInput(f"{where}.models must be a list of model names")
    return Service(name, str(namespace), entry, components, models)


def _target(where: str, doc: Any, revisions: Mapping[str, Revision]) -> Target:
    doc = _mapping(doc, where, TARGET_KEYS)
    revision = _str(doc, "revision", where)
    if revision not in revisions:
        raise InvalidInput(f"{where}.revision: {revision!r} is not in revisions")
    percent = doc.get("percent", 100)
    if not isinstance(percent, int) or isinstance(percent, bool) or not 0 <= percent <= 100:
        raise InvalidInput(f"{where}.percent must be an integer from 0 to 100")
    tag = doc.get("tag")
    if tag is not None and (not isinstance(tag, str) or not tag):
        raise InvalidInput(f"{where}.tag must be a non-empty string")
    return Target(revision, percent, tag)


def _revision(name: str, doc: Any) -> Revision:
    where = f"revisions.{name}"
    doc = _mapping(doc, where, REVISION_KEYS)
    endpoints = tuple(
        _endpoint(f"{where}.endpoints[{i}]", e)
        for i, e in enumerate(_list(doc.get("endpoints", []), f"{where}.endpoints"))
    )
    cc = doc.get("container_concurrency", 0)
    timeout = doc.get("timeout", 300.0)
    if not isinstance(cc, int) or isinstance(cc, bool) or cc < 0:
        raise InvalidInput(f"{where}.container_concurrency must be a non-negative integer")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise InvalidInput(f"{where}.timeout must be a positive number of seconds")
    component = doc.get("component", "predictor")
    if component not in COMPONENTS:
        raise InvalidInput(f"{where}.component must be one of {', '.join(COMPONENTS)}")
    return Revision(
        name,
        str(doc.get("namespace", "default")),
        str(doc.get("service", "")),
        component,
        endpoints,
        cc,
        float(timeout),
    )


def _endpoint(where: str, doc: Any) -> Endpoint:
    doc = _mapping(doc, where, ENDPOINT_KEYS)
    grpc, ready = doc.get("grpc"), doc.get("ready", True)
    if grpc is not None and (not isinstance(grpc, str) or not grpc):
        raise InvalidInput(f"{where}.grpc must be a host:port string, or null")
    if not isinstance(ready, bool):  # bool("false") is True: a quoted false would keep the replica in
        raise InvalidInput(f"{where}.ready must be true or false, got {ready!r}")
    return Endpoint(_str(doc, "http", where), grpc, ready)


def _mapping(value: Any, where: str, keys: tuple[str, ...] | None = None) -> Mapping[str, Any]:
    """``value`` as a mapping; with ``keys``, one with no other key."""
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{where or 'routing state'} must be a mapping")
    for key in value if keys is not None else ():
        if key not in keys:
            path = f"{where}.{key}" if where else str(key)
            raise InvalidInput(f"{path}: unknown key; expected one of {', '.join(sorted(keys))}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{where} must be a list")
    return value


def _str(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{where}.{key} must be a non-empty string")
    return value
