"""Which replica of a revision takes a request: least outstanding requests, ties broken at random. Pure: no I/O.

:class:`Backends` is the seam: the gateway asks it for a :class:`Lease` on one backend of a revision and releases
the lease when the exchange is over. :class:`LeastOutstanding` is the one implementation today; it answers
:class:`~common.errors.Unavailable` ("no ready replica for revision X") when a revision has no ready endpoint,
which is where the activator (a later issue) will take over: another ``Backends`` that sends such requests to the
activator instead of refusing them.

Outstanding counts are kept per (revision, endpoint) across routing-state changes, so a request in flight keeps
the endpoint it picked and its count is released against the same key; keys of endpoints that left the routing
state are dropped once their last request ends.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Literal, Protocol

from common.errors import Unavailable
from gateway.state import Endpoint, Revision

Kind = Literal["http", "grpc"]


class Lease:
    """One request's hold on one backend; ``address`` is ``host:port`` for the request's protocol."""

    __slots__ = ("address", "revision", "_owner", "_key")

    def __init__(self, owner: LeastOutstanding | None, key: tuple[str, str], address: str, revision: str) -> None:
        self.address = address
        self.revision = revision
        self._owner = owner
        self._key = key

    def __repr__(self) -> str:
        return f"<Lease {self.revision} {self.address}{'' if self._owner else ' released'}>"

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release(self._key)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Backends(Protocol):
    def acquire(self, revision: Revision, protocol: Kind = "http") -> Lease:
        """A lease on one backend of ``revision``; Unavailable when there is none to send the request to."""
        ...

    def retain(self, revisions: Mapping[str, Revision]) -> None:
        """The routing state changed: these are the revisions that exist now."""
        ...


class LeastOutstanding:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._outstanding: dict[tuple[str, str], int] = {}  # (revision, endpoint http address) -> requests
        self._live: frozenset[tuple[str, str]] | None = None  # None: no state seen yet, keep every key

    def __repr__(self) -> str:
        busy = {key: n for key, n in self._outstanding.items() if n}
        return f"<LeastOutstanding outstanding={busy}>"

    def acquire(self, revision: Revision, protocol: Kind = "http") -> Lease:
        endpoints = revision.endpoints
        if len(endpoints) == 1 and endpoints[0].ready and protocol == "http":
            endpoint = endpoints[0]  # one replica: no choice to make
        else:
            candidates = [e for e in endpoints if e.ready and (protocol == "http" or e.grpc)]
            if not candidates:
                kind = "" if protocol == "http" else " with a gRPC port"
                raise Unavailable(f"no ready replica{kind} for revision {revision.name}")
            endpoint = self._least(revision.name, candidates)
        key = (revision.name, endpoint.http)
        self._outstanding[key] = self._outstanding.get(key, 0) + 1
        address = endpoint.http if protocol == "http" else endpoint.grpc
        assert address is not None
        return Lease(self, key, address, revision.name)

    def outstanding(self, revision: str, endpoint: str) -> int:
        return self._outstanding.get((revision, endpoint), 0)

    def in_flight(self) -> dict[str, int]:
        """Requests holding a lease, by revision (revisions with none left out): summed here, when the metrics are
        scraped, rather than counted by revision on every request."""
        totals: dict[str, int] = {}
        for (revision, _), n in self._outstanding.items():
            if n:
                totals[revision] = totals.get(revision, 0) + n
        return totals

    def retain(self, revisions: Mapping[str, Revision]) -> None:
        self._live = frozenset(_keys(revisions.values()))
        for key in [k for k, n in self._outstanding.items() if n == 0 and k not in self._live]:
            del self._outstanding[key]

    def _least(self, revision: str, candidates: list[Endpoint]) -> Endpoint:
        if len(candidates) == 1:
            return candidates[0]
        counts = [self._outstanding.get((revision, e.http), 0) for e in candidates]
        low = min(counts)
        best = [e for e, n in zip(candidates, counts) if n == low]
        return best[0] if len(best) == 1 else self._rng.choice(best)

    def _release(self, key: tuple[str, str]) -> None:
        left = self._outstanding[key] - 1
        if left or self._live is None or key in self._live:
            self._outstanding[key] = left
        else:
            del self._outstanding[key]  # the endpoint left the routing state and this was its last request


def _keys(revisions: Iterable[Revision]) -> Iterable[tuple[str, str]]:
    for revision in revisions:
        for endpoint in revision.endpoints:
            yield revision.name, endpoint.http
