"""The routing table: which revision a request goes to, from its Host, its path, and a tag. Pure: no I/O.

A :class:`RoutingTable` is built once from a :class:`~gateway.state.RoutingState` and never changes; a new state
builds a new table, which the gateway swaps in with one assignment (a request keeps the table it started with).

Hosts (the port stripped, case-insensitive, a trailing dot ignored), for service ``isvc`` in namespace ``ns``, with
``<suffix>`` each of ``<domain>``, ``svc.cluster.local``, ``svc`` and nothing (Knative's external and cluster-local
names)::

    isvc.ns.<suffix>                       the service's entry component (its transformer, else its predictor)
    isvc-<component>.ns.<suffix>           that component (KServe's predictor/transformer/explainer hosts)
    <tag>-isvc-<component>.ns.<suffix>     100% to the revision tagged <tag> in that component (Knative tag hosts)
    <tag>-isvc.ns.<suffix>                 the same, in the entry component

Where two rules give the same host, the service host wins over a component host, and that over a tag host.

The gateway's own names (localhost, 127.0.0.1, ::1, its bind host, the bare domain; any IP literal when bound to
every address), with no port or one of its own ports, route by path instead: the model in
``/v1/models/<name>[:verb]`` or ``/v2/models/<name>[/...]`` picks the service whose ``models`` list has it, its
entry component, or its explainer for ``:explain`` when it has one. Any other Host (an internal address like
``127.0.0.1:<a replica's port>`` among them) matches nothing: the gateway only ever sends a request to an endpoint
of the routing state, never to an address taken from the request.

Within a component a revision is picked by the split (integer percents, drawn from the injected RNG), or, on a
route that is not a tag host, by ``Knative-Serving-Tag: <tag>`` when the component has that tag (an unknown tag
falls back to the split, as Knative's tag-header routing does).

    RoutingTable.match(host, path) -> Destination     NotFound: unknown host "<host>" / unknown model "<name>"
    RoutingTable.pick(destination, tag) -> Revision   Unavailable: the component has no revision with traffic
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from common.errors import NotFound, Unavailable
from gateway.state import Revision, RoutingState, Service, Target

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
CLUSTER_SUFFIXES = ("svc.cluster.local", "svc")


@dataclass(frozen=True, slots=True)
class Identity:
    """The names and ports the gateway answers on itself: a request to one of them routes by path."""

    hosts: frozenset[str] = frozenset(LOCAL_NAMES)
    ports: frozenset[int] = frozenset()
    any_address: bool = False  # bound to every address: any IP literal names the gateway too
    # names given with a port (``--name localhost:9000``: the port a container runtime publishes the gateway on),
    # the gateway's own with that port only
    published: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def of(cls, bind_host: str, ports: Iterable[int], names: Iterable[str] = ()) -> Identity:
        hosts, published = set(LOCAL_NAMES), set()
        for given in names:
            name, port = split_host(given)
            if port is None:
                hosts.add(name)
            elif port > 0:  # GatewayConfig refuses any other
                published.add((name, port))
        if bind_host not in WILDCARDS:
            hosts.add(bind_host.lower().strip("[]"))
        return cls(frozenset(hosts), frozenset(ports), bind_host in WILDCARDS, frozenset(published))


@dataclass(frozen=True, slots=True)
class Destination:
    """One component of one service: where a matched host or model sends traffic."""

    service: str
    namespace: str
    component: str
    split: tuple[tuple[int, str], ...]  # (cumulative percent, revision), targets with traffic only
    tags: Mapping[str, str]  # tag -> revision, for the Knative-Serving-Tag header
    pinned: str | None = None  # a tag host's revision: always this one

    def __repr__(self) -> str:
        where = f"{self.namespace}/{self.service} {self.component}"
        return f"<Destination {where} {'pinned=' + self.pinned if self.pinned else dict(self.split)}>"


MATCHES_KEPT = 1024


class RoutingTable:
    def __init__(
        self,
        state: RoutingState,
        identity: Identity = Identity(),
        *,
        domain: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.state = state
        self.domain = (domain or state.domain).lower()
        self.revisions: Mapping[str, Revision] = state.revisions
        self._rng = rng or random.Random()
        self._own = identity.hosts | {self.domain}
        self._ports = identity.ports
        self._any_address = identity.any_address
        self._published = identity.published
        self.hosts, self.models, self.conflicts = _index(state.services, self.domain)
        self._matched: dict[tuple[str | None, str], Destination] = {}  # (Host, path) -> where it went

    def __repr__(self) -> str:
        return f"<RoutingTable v{self.state.version} {self.domain} hosts={len(self.hosts)} models={len(self.models)}>"

    @property
    def version(self) -> int:
        return self.state.version

    # -- matching --------------------------------------------------------------------------------------------
    def match(self, host: str | None, path: str) -> Destination:
        """The destination of an HTTP request: by Host, or by the model in the path when the Host is our own.
        Matches are remembered for this table (at most MATCHES_KEPT of them; a table lives until the next
        routing state), since a service sees the same few hosts and paths over and over."""
        key = (host, path)
        destination = self._matched.get(key)
        if destination is None:
            destination = self._match(host, path)
            if len(self._matched) >= MATCHES_KEPT:
                self._matched.clear()  # many distinct hosts or paths: start again rather than grow
            self._matched[key] = destination
        return destination

    def _match(self, host: str | None, path: str) -> Destination:
        destination = self.match_host(host)
        if destination is not None:
            return destination
        model, verb = model_of_path(path)
        if model is None:
            raise NotFound(f"no model in path {path!r}: use /v1/models/<name> or /v2/models/<name>")
        return self.match_model(model, explain=verb == "explain")

    def match_host(self, host: str | None) -> Destination | None:
        """The destination a Host names; None when it names the gateway itself (route by path or model)."""
        name, port = split_host(host)
        if self.is_own(name, port):
            return None
        destination = self.hosts.get(name)
        if destination is None:
            raise NotFound(f'unknown host "{host}"')
        return destination

    def match_model(self, model: str | None, *, explain: bool = False) -> Destination:
        entry = self.models.get(model or "")
        if entry is None:
            raise NotFound(f'unknown model "{model}"')
        return entry[1] if explain and entry[1] is not None else entry[0]

    def is_own(self, name: str, port: int | None) -> bool:
        if port is not None and port not in self._ports:
            return (name, port) in self._published
        return name in self._own or (self._any_address and _is_ip(name))

    # -- picking a revision ----------------------------------------------------------------------------------
    def pick(self, destination: Destination, tag: str | None = None) -> Revision:
        """The revision this request goes to: a tag host's, the tag header's, or one drawn by the split."""
        name = destination.pinned or (destination.tags.get(tag) if tag else None)
        if name is None:
            split = destination.split
            if not split:
                raise Unavailable(
                    f"no revision takes traffic for {destination.component} of "
                    f"{destination.namespace}/{destination.service}"
                )
            if len(split) == 1:  # one revision takes it all (no canary): nothing to draw
                name = split[0][1]
            else:
                draw = self._rng.randrange(100)
                name = next((revision for bound, revision in split if draw < bound), split[-1][1])
        return self.revisions[name]

    def route(self, host: str | None, path: str, tag: str | None = None) -> Revision:
        return self.pick(self.match(host, path), tag)


def split_host(host: str | None) -> tuple[str, int | None]:
    """``Host`` as (lower-case name, port): ``[::1]:8080`` -> ("::1", 8080); no port: None; a port that is not a
    number: -1 (no port of ours). No Host at all names the gateway itself: ("localhost", None)."""
    if not host:
        return "localhost", None
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        name, port = host, ""  # a bare IPv6 address, or a name
    return name.rstrip("."), (int(port) if port.isdigit() else -1) if port else None


def model_of_path(path: str) -> tuple[str | None, str]:
    """(model, verb) of a KServe V1 or Open Inference Protocol path; (None, "") for any other path."""
    for prefix in ("/v1/models/", "/v2/models/"):
        if path.startswith(prefix):
            segment = path[len(prefix) :].split("/", 1)[0]
            if prefix == "/v1/models/" and ":" in segment:
                segment, _, verb = segment.rpartition(":")
                return segment or None, verb
            return segment or None, ""
    return None, ""


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# -- building the index ------------------------------------------------------------------------------------------
def _index(
    services: Iterable[Service], domain: str
) -> tuple[dict[str, Destination], dict[str, tuple[Destination, Destination | None]], list[str]]:
    """Every host and model name the services answer to; and what was shadowed, for the gateway to log."""
    services = list(services)
    suffixes = [f".{suffix}" for suffix in (domain, *CLUSTER_SUFFIXES)] + [""]  # "": <name>.<ns> alone
    hosts: dict[str, Destination] = {}
    models: dict[str, tuple[Destination, Destination | None]] = {}
    conflicts: list[str] = []

    def add(name: str, destination: Destination) -> None:
        for suffix in suffixes:
            host = f"{name}.{destination.namespace}{suffix}".lower()
            if host in hosts and hosts[host] != destination:
                conflicts.append(f"host {host} already routes to {hosts[host]!r}; not to {destination!r}")
            else:
                hosts[host] = destination

    for s in services:  # in order of precedence: service hosts, component hosts, tag hosts
        add(s.name, _destination(s, s.entry))
    for s in services:
        for component in s.components:
            add(f"{s.name}-{component}", _destination(s, component))
    for s in services:
        for component, targets in s.components.items():
            for t in (t for t in targets if t.tag):
                add(f"{t.tag}-{s.name}-{component}", _destination(s, component, t.revision))
                if component == s.entry:
                    add(f"{t.tag}-{s.name}", _destination(s, component, t.revision))
    for s in services:
        explainer = _destination(s, "explainer") if "explainer" in s.components else None
        for model in s.models:
            if model in models:
                conflicts.append(f"model {model} already routes to {models[model][0]!r}; not to {s.namespace}/{s.name}")
            else:
                models[model] = (_destination(s, s.entry), explainer)
    return hosts, models, conflicts


def _destination(service: Service, component: str, pinned: str | None = None) -> Destination:
    targets: tuple[Target, ...] = service.components[component]
    split, total = [], 0
    for t in targets:
        if t.percent > 0:
            total += t.percent
            split.append((total, t.revision))
    tags = {t.tag: t.revision for t in targets if t.tag}
    return Destination(service.name, service.namespace, component, tuple(split), tags, pinned)
