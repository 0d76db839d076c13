"""Scalers: how many replicas of a revision run, and which of them are ready. The Protocol and its local backend.

The controller calls :meth:`Scaler.scale` with a revision's :class:`ReplicaTemplate` and a count, reads the
replicas back with :meth:`Scaler.replicas`, and republishes the routing state whenever ``on_change`` fires. The
Protocol says nothing about processes, so a Kubernetes backend (a Deployment per revision, readiness from its
EndpointSlices) can implement it as well.

:class:`LocalScaler` runs each replica as two processes on free 127.0.0.1 ports: a model server and, in front of
it, a queue-proxy. One replica's life, supervised by one task (:meth:`_LocalReplica.supervise`):
  1. start: pick ports, spawn both processes at once, each in its own session (a terminal's Ctrl-C reaches only
     the controller, which then stops them in order) and with a parent-death signal (SIGTERM, so they never
     outlive a controller that was killed); output goes to ``<log_dir>/<replica>.<process>.log``;
  2. readiness: probe the queue-proxy as the kubelet does (it probes the model server), every 100 ms until ready,
     then every second; every change calls ``on_change()``;
  3. watchdog: when either process exits on its own, the replica is not ready at once (``on_change()``), the other
     process is stopped, and after a capped exponential backoff it starts again under the same name on new ports
     (``restarts`` + 1). A port taken between picking it and binding it ends that way too;
  4. stop (scale down, close): not ready and ``on_change()`` first, so the gateway sends nothing new; then SIGTERM
     to the queue-proxy, which drains (probes fail, requests are still served, a quiet period, in-flight requests
     finish), and only once it has exited SIGTERM to the model server. Either gets SIGKILL only after
     ``template.timeout`` + the quiet period + a margin.

:meth:`LocalScaler.scale` never awaits: replicas start and stop in the background (as a Deployment's scale does),
so calls for different revisions cannot interleave and a repeated call changes nothing. :meth:`LocalScaler.close`
waits until every process has exited; :meth:`LocalScaler.wait_stopped` waits for the replicas being stopped.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from common.lifecycle import free_port

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PROBE_HEADERS = {"User-Agent": "kube-probe/servelane", "K-Network-Probe": "queue"}
# A ready replica answers a probe in milliseconds. One that is not is held by the queue-proxy, which keeps probing
# its model server for up to 10 s: past this we count it as not ready and ask again.
PROBE_TIMEOUT = 2.0
STARTING_PERIOD = 0.1
READY_PERIOD = 1.0
STOP_MARGIN = 10.0  # beyond timeout + quiet period, before SIGKILL
PROCESSES = ("model-server", "queue-proxy")
_WIRED_FLAGS = ("--host", "--http-port", "--grpc-port")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class ReplicaTemplate:
    """What every replica of one revision runs. A revision is immutable: a changed spec is a new revision."""

    revision: str  # e.g. "sklearn-iris-predictor-00001"
    namespace: str
    service: str
    component: str  # predictor | transformer | explainer
    server_args: tuple[str, ...]  # model-server flags, without --host/--http-port/--grpc-port (the scaler adds those)
    env: tuple[tuple[str, str], ...] = ()
    container_concurrency: int = 0
    timeout: float = 300.0
    grpc: bool = True  # also give the model server and the queue-proxy gRPC ports

    def __post_init__(self) -> None:
        wired = [arg for arg in self.server_args if arg.split("=", 1)[0] in _WIRED_FLAGS]
        if wired:
            raise ValueError(f"server_args must not set {', '.join(wired)}: the scaler assigns host and ports")
        if self.container_concurrency < 0:
            raise ValueError("container_concurrency must be >= 0 (0 means unlimited)")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")

    @property
    def configuration(self) -> str:
        """Knative's configuration name: the revision's name without its ``-00001`` generation."""
        return re.sub(r"-\d+$", "", self.revision)


@dataclass(frozen=True, slots=True)
class Replica:
    name: str  # "<revision>-<n>", unique
    http: str  # host:port of the replica's queue-proxy
    grpc: str | None  # host:port of its gRPC port
    ready: bool
    restarts: int = 0
    stats: str | None = None  # host:port of its autoscaler stats (Knative's Stat)
    metrics: str | None = None  # host:port of its Prometheus metrics


class Scaler(Protocol):
    async def scale(self, template: ReplicaTemplate, replicas: int) -> None:
        """Start or stop replicas of ``template.revision`` to reach ``replicas`` (0 stops all)."""
        ...

    def replicas(self, revision: str) -> list[Replica]:
        """The replicas of a revision that count towards its scale, with their readiness."""
        ...

    async def close(self) -> None:
        """Stop everything, gracefully."""
        ...


@dataclass(frozen=True, slots=True)
class Ports:
    """One replica's ports on 127.0.0.1: the model server's, then the queue-proxy's (gRPC ones None without gRPC)."""

    http: int
    grpc: int | None
    queue: int
    queue_grpc: int | None
    admin: int
    stats: int
    metrics: int

    def __iter__(self) -> Iterator[int]:
        return (getattr(self, name) for name in self.__slots__ if getattr(self, name) is not None)


def model_server_argv(template: ReplicaTemplate, ports: Ports) -> list[str]:
    grpc = "-1" if ports.grpc is None else str(ports.grpc)  # -1: the model server's gRPC off
    wiring = ["--host", HOST, "--http-port", str(ports.http), "--grpc-port", grpc]
    return [sys.executable, "-m", "model_server", *wiring, *template.server_args]


def queue_proxy_argv(template: ReplicaTemplate, ports: Ports, drain_quiet: float) -> list[str]:
    argv = [sys.executable, "-m", "queue_proxy", "--host", HOST, "--upstream", f"{HOST}:{ports.http}"]
    if ports.grpc is not None:
        argv += ["--upstream-grpc", f"{HOST}:{ports.grpc}", "--grpc-port", str(ports.queue_grpc)]
    flags = {
        "--port": ports.queue, "--admin-port": ports.admin, "--stats-port": ports.stats,
        "--metrics-port": ports.metrics, "--container-concurrency": template.container_concurrency,
        "--timeout": template.timeout, "--drain-quiet-period": drain_quiet,
    }  # fmt: skip
    for flag, value in flags.items():
        argv += [flag, str(value)]
    return argv


def queue_proxy_env(template: ReplicaTemplate, pod: str) -> dict[str, str]:
    """Knative's environment for the queue-proxy, which labels its metrics with it."""
    return {
        "SERVING_REVISION": template.revision,
        "SERVING_NAMESPACE": template.namespace,
        "SERVING_SERVICE": template.service,
        "SERVING_CONFIGURATION": template.configuration,
        "SERVING_POD": pod,
    }


def restart_delay(crashes: int, base: float, cap: float) -> float:
    """The wait before restarting after the ``crashes``-th crash in a row: base, doubling, capped."""
    return min(cap, base * 2 ** (crashes - 1))


class LocalScaler:
    """The local backend: every replica is a model-server process and a queue-proxy process on 127.0.0.1."""

    def __init__(
        self,
        *,
        on_change: Callable[[], None] = lambda: None,
        log_dir: Path | None = None,
        drain_quiet: float = 1.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        if drain_quiet < 0 or backoff < 0 or max_backoff < backoff:
            raise ValueError("drain_quiet and backoff must be >= 0, and max_backoff >= backoff")
        self.on_change = on_change
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="servelane-replicas-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.drain_quiet = drain_quiet
        self.backoff = backoff  # the first restart's delay; doubles per crash in a row, up to max_backoff
        self.max_backoff = max_backoff
        self._revisions: dict[str, list[_LocalReplica]] = {}
        self._next_index: dict[str, int] = {}
        self._stopping: set[_LocalReplica] = set()
        self._ports_in_use: set[int] = set()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        shown = " ".join(
            f"{revision}={sum(r.ready for r in replicas)}/{len(replicas)}"
            for revision, replicas in sorted(self._revisions.items())
        )
        return f"<LocalScaler {shown or 'empty'} stopping={len(self._stopping)}>"

    # -- the Scaler protocol -----------------------------------------------------------------------------------
    async def scale(self, template: ReplicaTemplate, replicas: int) -> None:
        """Start or stop replicas to reach ``replicas``; returns at once (readiness comes through on_change)."""
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        if self._closed:
            raise RuntimeError("the scaler is closed")
        running = self._revisions.setdefault(template.revision, [])
        before = len(running)
        if replicas > before:
            running.extend(self._start(template) for _ in range(replicas - before))
        elif replicas < before:
            self._stop(template.revision, before - replicas)
        if not running:
            del self._revisions[template.revision]
        if replicas != before:
            log.info("scaling %s from %d to %d replicas", template.revision, before, replicas)
            self.changed()

    def replicas(self, revision: str) -> list[Replica]:
        return [replica.snapshot() for replica in self._revisions.get(revision, ())]

    async def close(self) -> None:
        """Stop every replica (drained, in order) and wait until every process has exited."""
        self._closed = True
        if self._revisions:
            for revision, running in self._revisions.items():
                self._stop(revision, len(running))
            self._revisions.clear()
            self.changed()
        await self.wait_stopped()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- beyond the protocol -----------------------------------------------------------------------------------
    async def wait_stopped(self) -> None:
        """Wait until every replica being stopped has stopped (its processes have exited)."""
        while self._stopping:
            await asyncio.wait({replica.task for replica in self._stopping})

    def pids(self) -> dict[str, int]:
        """``"<replica>/<process>"`` → pid of every process running now, replicas being stopped included."""
        replicas = [*self._stopping, *(r for running in self._revisions.values() for r in running)]
        return {f"{r.name}/{name}": p.pid for r in replicas for name, p in r.processes.items() if p.returncode is None}

    def changed(self) -> None:
        """Tell the controller; an error in its callback is logged, never raised into a replica's supervisor."""
        try:
            self.on_change()
        except Exception:
            log.exception("on_change callback failed")

    # -- replicas ----------------------------------------------------------------------------------------------
    def _start(self, template: ReplicaTemplate) -> _LocalReplica:
        index = self._next_index.get(template.revision, 0) + 1
        self._next_index[template.revision] = index
        replica = _LocalReplica(f"{template.revision}-{index}", index, template, self)
        replica.task = asyncio.create_task(replica.supervise(), name=f"replica {replica.name}")
        replica.task.add_done_callback(_log_failure)
        return replica

    def _stop(self, revision: str, count: int) -> None:
        """Stop ``count`` replicas of a revision: those not ready first, then the newest."""
        running = self._revisions[revision]
        for replica in sorted(running, key=lambda r: (r.ready, -r.index))[:count]:
            running.remove(replica)
            replica.stop()
            self._stopping.add(replica)
            replica.task.add_done_callback(lambda _, replica=replica: self._stopping.discard(replica))

    def take_ports(self, grpc: bool) -> Ports:
        """Free ports, none of them handed to another replica of ours that is still running."""

        def pick() -> int:
            while (port := free_port(HOST)) in self._ports_in_use:
                pass
            self._ports_in_use.add(port)
            return port

        return Ports(pick(), pick() if grpc else None, pick(), pick() if grpc else None, pick(), pick(), pick())

    def release_ports(self, ports: Ports) -> None:
        self._ports_in_use.difference_update(ports)

    async def probe(self, port: int) -> bool:
        """A kubelet-style probe of a queue-proxy: 200 means it and its model server are ready."""
        if self._session is None:
            # A fresh connection per probe: a reused one to a process that just exited would fail a healthy probe.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        try:
            timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
            async with self._session.get(f"http://{HOST}:{port}/", headers=PROBE_HEADERS, timeout=timeout) as r:
                return r.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False


class _LocalReplica:
    """One replica: its two processes, their ports, its readiness, and the task that supervises it."""

    def __init__(self, name: str, index: int, template: ReplicaTemplate, scaler: LocalScaler) -> None:
        self.name, self.index, self.template, self.scaler = name, index, template, scaler
        self.ports = scaler.take_ports(template.grpc)
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.ready = False
        self.ready_since: float | None = None
        self.restarts = 0
        self.task: asyncio.Task[None]
        self._stop = asyncio.Event()

    def __repr__(self) -> str:
        pids = {name: p.pid for name, p in self.processes.items()}
        return f"<_LocalReplica {self.name} ready={self.ready} restarts={self.restarts} pids={pids}>"

    def snapshot(self) -> Replica:
        p = self.ports
        return Replica(
            self.name,
            f"{HOST}:{p.queue}",
            None if p.queue_grpc is None else f"{HOST}:{p.queue_grpc}",
            self.ready,
            self.restarts,
            f"{HOST}:{p.stats}",
            f"{HOST}:{p.metrics}",
        )

    def stop(self) -> None:
        """Not ready from now on (the caller tells the controller); the supervisor then stops the processes."""
        self.ready = False
        self._stop.set()

    async def supervise(self) -> None:
        """Start, watch, restart after a crash (with backoff), and stop in order when asked to."""
        crashes = 0
        try:
            while not self._stop.is_set():
                exited = await self._spawn() or await self._watch()
                if exited is None:  # asked to stop
                    break
                crashes = 1 if self._was_stable() else crashes + 1
                delay = restart_delay(crashes, self.scaler.backoff, self.scaler.max_backoff)
                await self._crashed(exited, delay)
                if await _wait(self._stop, delay):
                    break
                self.scaler.release_ports(self.ports)
                self.ports = self.scaler.take_ports(self.template.grpc)
                self.restarts += 1
        finally:
            await self._stop_processes()
            self.scaler.release_ports(self.ports)

    async def _spawn(self) -> str | None:
        """Start both processes at once; the name of one that could not be started, or None."""
        results = await asyncio.gather(*(self._exec(name) for name in PROCESSES), return_exceptions=True)
        failed = None
        for name, result in zip(PROCESSES, results):
            if isinstance(result, BaseException):
                log.error("%s: could not start its %s: %s", self.name, name, result)
                failed = name
            else:
                self.processes[name] = result
        return failed

    async def _exec(self, name: str) -> asyncio.subprocess.Process:
        t = self.template
        if name == "model-server":
            argv, extra = model_server_argv(t, self.ports), {}
        else:
            argv, extra = queue_proxy_argv(t, self.ports, self.scaler.drain_quiet), queue_proxy_env(t, self.name)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **dict(t.env), **extra}  # ours, as a child inherits it
        with open(self.scaler.log_dir / f"{self.name}.{name}.log", "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start {self.restarts}: {' '.join(argv)}\n".encode())
            out.flush()
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),
            )

    async def _watch(self) -> str | None:
        """Probe readiness until a process exits (its name) or a stop is asked for (None)."""
        exits = {asyncio.ensure_future(p.wait()): name for name, p in self.processes.items()}
        stop = asyncio.ensure_future(self._stop.wait())
        probing = asyncio.create_task(self._probe_loop())
        try:
            done, _ = await asyncio.wait([*exits, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel(probing, stop, *exits)
        if stop in done:
            return None
        return next(exits[task] for task in exits if task in done)

    async def _probe_loop(self) -> None:
        while True:
            self._set_ready(await self.scaler.probe(self.ports.queue))
            await asyncio.sleep(READY_PERIOD if self.ready else STARTING_PERIOD)

    def _set_ready(self, ready: bool) -> None:
        if ready == self.ready or self._stop.is_set():
            return
        self.ready = ready
        self.ready_since = time.monotonic() if ready else None
        if ready:
            log.info("%s ready on %s", self.name, self.snapshot().http)
        else:
            log.warning("%s no longer ready", self.name)
        self.scaler.changed()

    def _was_stable(self) -> bool:
        """Ready for long enough before this crash that it starts a fresh backoff sequence."""
        return self.ready_since is not None and time.monotonic() - self.ready_since >= self.scaler.max_backoff

    async def _crashed(self, exited: str, delay: float) -> None:
        """Not ready at once, then the other process stopped."""
        self.ready, self.ready_since = False, None
        self.scaler.changed()
        process = self.processes.get(exited)
        code = None if process is None else await process.wait()
        log.warning(
            "%s: its %s exited (code %s); restart %d in %.1f s. Its last output:\n%s",
            self.name,
            exited,
            code,
            self.restarts + 1,
            delay,
            self._tail(exited),
        )
        await self._stop_processes()

    def _tail(self, process: str, size: int = 2000) -> str:
        try:
            with open(self.scaler.log_dir / f"{self.name}.{process}.log", "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - size))
                return f.read().decode(errors="replace")
        except OSError as exc:
            return f"(no output: {exc})"

    async def _stop_processes(self) -> None:
        """The queue-proxy first (it drains), then the model server; SIGKILL for either only past the bound."""
        bound = self.template.timeout + self.scaler.drain_quiet + STOP_MARGIN
        for name in reversed(PROCESSES):
            if name in self.processes:
                await terminate(self.processes[name], bound, f"{self.name}/{name}")
                del self.processes[name]  # only now: a cancellation while waiting leaves it for the next stop


async def terminate(process: asyncio.subprocess.Process, bound: float, what: str) -> None:
    """SIGTERM, then wait up to ``bound`` seconds; SIGKILL past it. Always waits for the exit (no zombie)."""
    if process.returncode is None:
        try:
            os.kill(process.pid, signal.SIGTERM)  # not process.send_signal(): its poll() can race the child watcher
        except ProcessLookupError:
            pass
    try:
        code = await asyncio.wait_for(process.wait(), bound)
    except TimeoutError:
        log.warning("%s still running %.0f s after SIGTERM: SIGKILL", what, bound)
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = await process.wait()
    log.info("%s exited (code %s)", what, code)


def die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn (Linux) that has the child get SIGTERM when the controller dies, even while it was forking.

    The death signal follows the thread that forked: the controller must spawn from its event loop's thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only makes system calls

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the controller died before the prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """Whether ``event`` was set within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def _cancel(*tasks: asyncio.Future[object]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", task.get_name(), exc_info=task.exception())
