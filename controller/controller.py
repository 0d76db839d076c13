"""The controller: InferenceService specs in, revisions scaled and a routing state published out.

What applying a spec does, per component (predictor, transformer, explainer)::

    digest unchanged            nothing new; a changed canaryTrafficPercent only moves traffic
    digest changed (or new)     a new revision "<isvc>-<component>-<NNNNN>", scaled to max(minReplicas, 1)
    rolled out                  the revision that last took 100 %: the latest, once it is ready with no
                                canaryTrafficPercent (or 100, or when none was rolled out before); an unpromoted
                                canary never becomes it, so a spec applied mid-canary splits against the same one
    traffic                     the latest revision once it is ready; until then the rolled-out one, else the last
                                ready one (so a re-apply switches only when the new revision can take requests:
                                none fail); with canaryTrafficPercent P and a rolled-out revision, a ready latest
                                gets P % and the rolled-out one the rest (all of it goes to the latest while the
                                rolled-out one is not ready), and while the latest starts, an earlier canary that is
                                ready keeps its P % (as Knative's latestRevision target, the latest ready one); tags
                                "latest" and "prev" name the latest and the rolled-out revision (KServe's tags), a
                                revision at 0 % keeps its tag
    retired revisions           scaled to 0 once no traffic points at them: the routing state without them is
                                published first, then their queue-proxies drain

A transformer or explainer calls its predictor through the gateway, with the predictor's component host as
authority (``<isvc>-predictor.<ns>.<domain>``), as KServe does through the cluster's ingress: the predictor's
traffic split and replica balancing apply to those calls too.

Every change (an apply, a replica turning ready or not) rebuilds the :class:`RoutingState` with a higher version;
:meth:`Controller.wait_state` is the long-poll the gateway's ``--controller`` source uses. The scaler (local
processes here, Kubernetes later) is a :class:`controller.scaler.Scaler`; its ``on_change`` calls
:meth:`Controller.changed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field

from controller.scaler import ReplicaTemplate, Scaler
from controller.spec import ComponentSpec, InferenceServiceSpec, SpecError
from gateway.state import Endpoint, Revision, RoutingState, Service, Target

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    """Where a transformer reaches its predictor: the gateway's HTTP and gRPC ``host:port``."""

    http: str
    grpc: str | None = None


@dataclass(slots=True)
class RevisionRecord:
    name: str
    number: int
    spec: ComponentSpec
    template: ReplicaTemplate
    digest: str
    replicas: int = 1
    retired: bool = False


@dataclass(slots=True)
class ComponentRecord:
    revisions: list[RevisionRecord] = field(default_factory=list)
    canary: int | None = None
    rolled_out: RevisionRecord | None = None  # KServe's latestRolledoutRevision: the stable side of a canary

    @property
    def latest(self) -> RevisionRecord | None:
        return self.revisions[-1] if self.revisions else None


@dataclass(slots=True)
class ServiceRecord:
    spec: InferenceServiceSpec
    components: dict[str, ComponentRecord] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Applied:
    """What one apply did to one service: the revisions it created (empty when nothing changed), and the spec's
    warnings (fields recorded without a local effect)."""

    service: str
    namespace: str
    created: tuple[str, ...]
    warnings: tuple[str, ...] = ()


class Controller:
    def __init__(
        self, scaler: Scaler, gateway: GatewayAddress, *, domain: str = "example.com", retire_delay: float = 1.0
    ) -> None:
        self.scaler = scaler
        self.gateway = gateway
        self.domain = domain
        self.retire_delay = retire_delay  # seconds between publishing a state without a revision and scaling it down
        self._services: dict[tuple[str, str], ServiceRecord] = {}
        self._state = RoutingState(0, domain)
        self._published = asyncio.Condition()
        self._lock = asyncio.Lock()  # one apply at a time
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<Controller services={[f'{ns}/{n}' for n, ns in self._services]} version={self._state.version}>"

    # -- applying specs ------------------------------------------------------------------------------------------
    async def apply(self, specs: Iterable[InferenceServiceSpec]) -> list[Applied]:
        """Record the specs and start their new revisions; returns at once (``ready()`` says when they serve)."""
        async with self._lock:
            specs = list(specs)
            for spec in specs:  # all or nothing: check every spec before changing anything
                self._check(spec)
            results = [self._apply_one(spec) for spec in specs]
            for component in self._components():
                _roll_out(component, self._ready)
                for revision in self._serving(component):
                    self._spawn(self.scaler.scale(revision.template, revision.replicas))
            self.changed()
            return results

    def _check(self, spec: InferenceServiceSpec) -> None:
        record = self._services.get((spec.name, spec.namespace))
        removed = [c for c in record.components if c not in spec.components] if record else []
        if removed:
            raise SpecError(f"spec: removing components ({', '.join(removed)}) from a service is not supported yet")
        if self.gateway.grpc is None and any(
            c.predictor_protocol == "grpc-v2" for c in spec.components.values() if c.component != "predictor"
        ):
            raise SpecError("spec: a component calls its predictor over gRPC, and the gateway has no gRPC port")

    def _apply_one(self, spec: InferenceServiceSpec) -> Applied:
        key = (spec.name, spec.namespace)
        record = self._services.setdefault(key, ServiceRecord(spec))
        record.spec = spec
        created = []
        for component, component_spec in spec.components.items():
            state = record.components.setdefault(component, ComponentRecord())
            state.canary = component_spec.canary_traffic_percent
            latest = state.latest
            if latest is not None and latest.digest == component_spec.digest():
                latest.replicas = _replicas(component_spec)
                continue
            revision = self._new_revision(spec, component_spec, len(state.revisions) + 1)
            state.revisions.append(revision)
            created.append(revision.name)
            log.info("%s/%s: new %s revision %s", spec.namespace, spec.name, component, revision.name)
        for warning in spec.warnings:
            log.warning("%s/%s: %s", spec.namespace, spec.name, warning)
        return Applied(spec.name, spec.namespace, tuple(created), spec.warnings)

    def _new_revision(self, spec: InferenceServiceSpec, component: ComponentSpec, number: int) -> RevisionRecord:
        name = f"{spec.name}-{component.component}-{number:05d}"
        args = list(component.server_args)
        if component.component != "predictor":
            grpc = component.predictor_protocol == "grpc-v2"
            target = self.gateway.grpc if grpc else self.gateway.http
            args += ["--predictor-host", target, "--predictor-authority", self.component_host(spec, "predictor")]
        template = ReplicaTemplate(
            revision=name,
            namespace=spec.namespace,
            service=spec.name,
            component=component.component,
            server_args=tuple(args),
            env=component.env,
            container_concurrency=component.container_concurrency,
            timeout=component.timeout,
        )
        return RevisionRecord(name, number, component, template, component.digest(), _replicas(component))

    def component_host(self, spec: InferenceServiceSpec, component: str) -> str:
        return f"{spec.name}-{component}.{spec.namespace}.{self.domain}"

    def service_host(self, name: str, namespace: str) -> str:
        return f"{name}.{namespace}.{self.domain}"

    def _serving(self, component: ComponentRecord) -> list[RevisionRecord]:
        """The revisions that keep running: the latest, and any that traffic points at now."""
        names = {t.revision for t in _traffic(component, self._ready)}
        return [r for r in component.revisions if r.name in names or r is component.latest]

    def _retire(self) -> None:
        """Scale to 0 the revisions no traffic points at any more, once a state without them has had time to
        reach the gateway; their queue-proxies then drain what is in flight."""
        for component in self._components():
            keep = {r.name for r in self._serving(component)}
            for revision in component.revisions:
                if revision.name not in keep and not revision.retired:
                    revision.retired = True
                    self._spawn(self._scale_down(revision))

    async def _scale_down(self, revision: RevisionRecord) -> None:
        await asyncio.sleep(self.retire_delay)
        log.info("revision %s retired: scaling to 0", revision.name)
        await self.scaler.scale(revision.template, 0)

    def _components(self) -> list[ComponentRecord]:
        return [c for s in self._services.values() for c in s.components.values()]

    # -- publishing ----------------------------------------------------------------------------------------------
    def changed(self) -> None:
        """Rebuild the routing state (the scaler calls this when a replica's readiness changes)."""
        for component in self._components():
            _roll_out(component, self._ready)
        state = self._build(self._state.version + 1)
        if _same_routes(state, self._state):
            return
        self._state = state
        self._spawn(self._notify())
        self._retire()

    async def _notify(self) -> None:
        async with self._published:
            self._published.notify_all()

    @property
    def state(self) -> RoutingState:
        return self._state

    async def wait_state(self, after: int, timeout: float) -> RoutingState | None:
        """The routing state once its version is above ``after``; None if ``timeout`` seconds pass first."""
        async with self._published:
            try:
                await asyncio.wait_for(self._published.wait_for(lambda: self._state.version > after), timeout)
            except TimeoutError:
                return None
        return self._state

    def _build(self, version: int) -> RoutingState:
        services, revisions = [], {}
        for record in self._services.values():
            components = {}
            for name, component in record.components.items():
                targets = _traffic(component, self._ready)
                components[name] = targets
                records = {r.name: r for r in component.revisions}
                for target in targets:
                    revisions[target.revision] = self._revision(record.spec, records[target.revision])
            spec = record.spec
            services.append(Service(spec.name, spec.namespace, spec.entry, components, (spec.model_name,)))
        return RoutingState(version, self.domain, tuple(services), revisions)

    def _revision(self, spec: InferenceServiceSpec, record: RevisionRecord) -> Revision:
        endpoints = tuple(Endpoint(r.http, r.grpc, r.ready) for r in self.scaler.replicas(record.name))
        component = record.spec
        return Revision(
            record.name, spec.namespace, spec.name, component.component, endpoints, component.container_concurrency,
            component.timeout,
        )  # fmt: skip

    def _ready(self, revision: str) -> bool:
        return any(r.ready for r in self.scaler.replicas(revision))

    # -- status and lifecycle ------------------------------------------------------------------------------------
    def status(self) -> dict:
        """Services, revisions (traffic, tags, replicas; which revision is the latest and which the rolled-out one)
        for ``servelane status``."""
        out = []
        for record in self._services.values():
            spec = record.spec
            components = {}
            for name, component in record.components.items():
                traffic = {t.revision: t for t in _traffic(component, self._ready)}
                components[name] = [
                    {
                        "revision": r.name,
                        "percent": traffic[r.name].percent if r.name in traffic else 0,
                        "tag": traffic[r.name].tag if r.name in traffic else None,
                        "replicas": [
                            {
                                "name": x.name,
                                "http": x.http,
                                "grpc": x.grpc,
                                "ready": x.ready,
                                "restarts": x.restarts,
                                "stats": x.stats,
                            }
                            for x in self.scaler.replicas(r.name)
                        ],
                        "desired": 0 if r.retired else r.replicas,
                        "latest": r is component.latest,  # KServe's latestCreatedRevision
                        "rolled_out": r is component.rolled_out,  # KServe's latestRolledoutRevision
                    }
                    for r in component.revisions
                    if not r.retired or self.scaler.replicas(r.name)
                ]
            out.append(
                {
                    "name": spec.name,
                    "namespace": spec.namespace,
                    "host": self.service_host(*_key(spec)),
                    "entry": spec.entry,
                    "components": components,
                }
            )
        return {"version": self._state.version, "services": out}

    def ready(self) -> bool:
        """Every service's traffic points at revisions with a ready replica."""
        return all(
            self._state.revisions.get(t.revision) and self._state.revisions[t.revision].ready_endpoints
            for s in self._state.services
            for targets in s.components.values()
            for t in targets
            if t.percent
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.scaler.close()

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _replicas(spec: ComponentSpec) -> int:
    """Scale to zero comes with the activator: until then a revision runs max(minReplicas, 1)."""
    return max(spec.min_replicas, 1)


def _key(spec: InferenceServiceSpec) -> tuple[str, str]:
    return spec.name, spec.namespace


def _roll_out(component: ComponentRecord, ready: Callable[[str], bool]) -> None:
    """The latest revision becomes the rolled-out one once it is ready and takes 100 % (see the module docstring)."""
    latest, stable = component.latest, component.rolled_out
    if latest is None or latest is stable or not ready(latest.name):
        return
    if component.canary in (None, 100) or stable is None or stable.retired:
        component.rolled_out = latest


def _traffic(component: ComponentRecord, ready: Callable[[str], bool]) -> tuple[Target, ...]:
    """Where a component's traffic goes now (see the module docstring)."""
    latest, stable = component.latest, component.rolled_out
    if latest is None:
        return ()
    if stable is latest or (stable is not None and stable.retired):
        stable = None
    canary = component.canary
    if ready(latest.name):
        if canary is None or stable is None:
            return (Target(latest.name, 100, "latest"),)
        share = canary if ready(stable.name) else 100  # a stable side that is restarting keeps its tag at 0 %
        return (Target(stable.name, 100 - share, "prev"), Target(latest.name, share, "latest"))
    if stable is not None and ready(stable.name):
        serving = None if canary in (None, 0, 100) else _serving_canary(component, stable, ready)
        if serving is not None and canary is not None:  # an earlier canary keeps its share until the latest is ready
            return (
                Target(stable.name, 100 - canary, "prev"),
                Target(serving.name, canary),
                Target(latest.name, 0, "latest"),
            )
        return (Target(stable.name, 100, "prev"), Target(latest.name, 0, "latest"))
    previous = [r for r in component.revisions[:-1] if ready(r.name) and not r.retired]
    if not previous:
        return (Target(latest.name, 100, "latest"),)
    return (Target(previous[-1].name, 100, "prev"), Target(latest.name, 0, "latest"))


def _serving_canary(
    component: ComponentRecord, stable: RevisionRecord, ready: Callable[[str], bool]
) -> RevisionRecord | None:
    """The newest ready revision between the rolled-out one and the latest: an earlier canary, still serving while
    the latest starts (Knative's ``latestRevision`` target follows the latest *ready* revision); None if none."""
    for revision in reversed(component.revisions[:-1]):
        if revision is stable:
            return None
        if not revision.retired and ready(revision.name):
            return revision
    return None


def _same_routes(a: RoutingState, b: RoutingState) -> bool:
    return a.services == b.services and a.revisions == b.revisions
