"""Where the gateway's routing state comes from: a file it watches, or the controller it long-polls.

Both call ``apply(state)`` with each new :class:`~gateway.state.RoutingState` and never stop on a bad one: it is
logged and the last good state stays in force.

- :class:`FileSource` (``--routes FILE``, YAML or JSON): read at start (a bad file then is an error: the gateway
  does not start without routes), then re-read whenever its modification time, size or inode changes (checked
  every ``interval`` seconds) or on :meth:`FileSource.reload` (the gateway calls it on SIGHUP). Any changed
  document that parses is applied, whatever its version: people edit these files by hand.
- :class:`ControllerSource` (``--controller URL``): ``GET {URL}/v1/routing?after=<version>&wait=<seconds>``, again
  and again. The controller answers 200 with the document once its version is greater than ``after``, or 304
  with no body after ``wait`` seconds. The first request, and the first after an outage, sends ``after=-1`` and
  applies whatever comes back, so a controller that restarted with lower version numbers is followed. While the
  controller is unreachable or answers errors, the last state keeps serving and attempts back off (0.1 s doubling
  to ``max_backoff``), with one warning per outage and one line when it is back. A document that does not parse
  is logged and skipped (the next request asks for versions after it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from common.errors import InvalidInput
from common.upstream import UpstreamPool
from gateway.state import RoutingState

log = logging.getLogger(__name__)

Apply = Callable[[RoutingState], None]
FIRST_BACKOFF = 0.1


def parse_document(text: str | bytes, *, json_only: bool = False) -> RoutingState:
    """A routing-state document from JSON or YAML text; InvalidInput names what is wrong."""
    try:
        doc: Any = json.loads(text) if json_only else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidInput(f"not {'JSON' if json_only else 'YAML or JSON'}: {exc}") from None
    return RoutingState.from_dict(doc)


class _Task:
    """A source's one background task: started once, cancelled and awaited on stop."""

    _task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


class FileSource(_Task):
    def __init__(self, path: Path, apply: Apply, *, interval: float = 1.0) -> None:
        self.path = path
        self.apply = apply
        self.interval = interval
        self._stamp: tuple[int, int, int] | None = None
        self._poke = asyncio.Event()

    def __repr__(self) -> str:
        return f"<FileSource {self.path} every {self.interval:g}s>"

    def load(self) -> RoutingState:
        """Read and parse the file now (raises InvalidInput or OSError); remembers what it read."""
        self._stamp = self._stat()
        try:
            return parse_document(self.path.read_bytes(), json_only=self.path.suffix == ".json")
        except InvalidInput as exc:
            raise InvalidInput(f"routes file {self.path}: {exc.message}") from None

    def reload(self) -> None:
        """Re-read on the next turn, changed or not (SIGHUP). Only sets an event: safe from a signal handler."""
        self._poke.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._poke.wait(), self.interval)
            except TimeoutError:
                pass
            forced = self._poke.is_set()
            self._poke.clear()
            await self._check(forced)

    async def _check(self, forced: bool) -> None:
        try:
            if not forced and self._stat() == self._stamp:
                return
            state = await asyncio.to_thread(self.load)
        except FileNotFoundError:
            if self._stamp is not None:
                log.error("routes file %s is gone; keeping the routing state in force", self.path)
                self._stamp = None
            return
        except (InvalidInput, OSError) as exc:
            log.error("routes not applied, keeping the routing state in force: %s", exc)
            return
        log.info("routes file %s: applying version %d", self.path, state.version)
        self.apply(state)

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size, st.st_ino


class ControllerSource(_Task):
    def __init__(self, url: str, apply: Apply, *, wait: float = 30.0, max_backoff: float = 5.0) -> None:
        self.url = url.rstrip("/") + "/v1/routing"
        self.apply = apply
        self.wait = wait
        self.max_backoff = max_backoff
        self.version = -1  # the version last applied (or skipped as bad)
        self.resync = True  # take whatever the controller has: at start and after an outage
        self.outage = False

    def __repr__(self) -> str:
        return f"<ControllerSource {self.url} version={self.version}{' outage' if self.outage else ''}>"

    async def run(self) -> None:
        parts = urlsplit(self.url)
        pool = UpstreamPool(parts.hostname or "127.0.0.1", parts.port or 80, 1)
        headers = (("Host", parts.netloc), ("Accept", "application/json"))
        backoff = FIRST_BACKOFF
        try:
            while True:
                try:
                    async with asyncio.timeout(self.wait + 10):
                        progressed = await self._poll(pool, parts.path, headers)
                except (TimeoutError, OSError) as exc:
                    self._down(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                    progressed = False
                if progressed:
                    backoff = FIRST_BACKOFF
                    continue
                await asyncio.sleep(backoff)  # the controller is away, or sent nothing usable: do not spin
                backoff = min(backoff * 2, self.max_backoff)
        finally:
            pool.close()

    async def _poll(self, pool: UpstreamPool, path: str, headers: tuple[tuple[str, str], ...]) -> bool:
        """One long poll: True for a 304 or a state applied; OSError (ConnectionError) for a failure."""
        after = -1 if self.resync else self.version
        response = await pool.request("GET", f"{path}?after={after}&wait={self.wait:g}", headers, None, None)
        try:
            if response.status not in (200, 304):
                raise ConnectionError(f"HTTP {response.status}")
            body = await response.read() if response.status == 200 else None
        finally:
            response.release()
        self._up()
        return True if body is None else self._take(body)

    def _take(self, body: bytes) -> bool:
        try:
            state = parse_document(body, json_only=True)
        except InvalidInput as exc:
            version = _version_of(body)
            log.error("controller sent a routing state that does not parse (version %s), skipped: %s", version, exc)
            if isinstance(version, int) and version > self.version:
                self.version = version
            self.resync = False
            return False
        if not self.resync and state.version <= self.version:
            return False  # not newer than ours: the controller broke the contract; ask again after a pause
        log.info("controller: applying routing state version %d", state.version)
        self.apply(state)
        self.version = state.version
        self.resync = False
        return True

    def _down(self, reason: str) -> None:
        if not self.outage:
            log.warning(
                "controller at %s unreachable (%s); serving routing state version %d until it is back",
                self.url, reason, self.version,
            )  # fmt: skip
        self.outage = True
        self.resync = True

    def _up(self) -> None:
        if self.outage:
            log.info("controller at %s is back", self.url)
        self.outage = False


def _version_of(body: bytes) -> object:
    try:
        return json.loads(body).get("version")
    except (ValueError, AttributeError):
        return None
