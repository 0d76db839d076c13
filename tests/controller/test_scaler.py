"""controller.scaler: the command lines and ports it wires (no processes), then the local backend with real
model-server and queue-proxy processes: readiness, inference through each replica, the watchdog after a SIGKILL,
a scale-down that lets an in-flight request finish, a crash loop, and no process left behind by close() or by a
controller that was killed."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import tritonclient.grpc.aio as grpcclient

from common.lifecycle import free_port
from controller import scaler as scaler_module
from controller.scaler import LocalScaler, Ports, Replica, ReplicaTemplate
from tests.harness import ROOT
from tests.slow_model import slow_repository as build_slow_repository

pytestmark = pytest.mark.timeout(60)
IRIS = {"instances": [[6.8, 2.8, 4.8, 1.4]]}
PREDICT = "/v1/models/sklearn-iris:predict"
SLOW = {
    "inputs": [
        {"name": "x", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256},
        {"name": "iterations", "shape": [1], "datatype": "INT64", "data": [500_000]},  # about 2 s on one core
    ]
}


def template(repository: Path, revision: str = "sklearn-iris-predictor-00001", **overrides: object) -> ReplicaTemplate:
    settings: dict = {"server_args": ("--model-repository", str(repository), "--log-level", "WARNING")}
    return ReplicaTemplate(revision, "default", "sklearn-iris", "predictor", **{**settings, **overrides})


# -- without processes ---------------------------------------------------------------------------------------------
def test_template_rejects_the_flags_the_scaler_wires_and_bad_values():
    for args in (("--http-port", "8080"), ("--grpc-port=9000",), ("--host", "0.0.0.0")):
        with pytest.raises(ValueError, match="must not set"):
            ReplicaTemplate("r-00001", "default", "r", "predictor", args)
    with pytest.raises(ValueError, match="container_concurrency"):
        ReplicaTemplate("r-00001", "default", "r", "predictor", (), container_concurrency=-1)
    with pytest.raises(ValueError, match="timeout"):
        ReplicaTemplate("r-00001", "default", "r", "predictor", (), timeout=0)


def test_command_lines_and_knative_environment():
    t = ReplicaTemplate(
        "iris-predictor-00002", "ns", "iris", "predictor", ("--model-name", "m"), container_concurrency=4, timeout=30
    )
    ports = Ports(http=1, grpc=2, queue=3, queue_grpc=4, admin=5, stats=6, metrics=7)
    server = scaler_module.model_server_argv(t, ports)
    assert " ".join(server[1:]) == "-m model_server --host 127.0.0.1 --http-port 1 --grpc-port 2 --model-name m"
    proxy = " ".join(scaler_module.queue_proxy_argv(t, ports, drain_quiet=0.5))
    for part in (
        "--upstream 127.0.0.1:1",
        "--upstream-grpc 127.0.0.1:2",
        "--port 3",
        "--grpc-port 4",
        "--admin-port 5",
        "--stats-port 6",
        "--metrics-port 7",
        "--container-concurrency 4",
        "--timeout 30",
        "--drain-quiet-period 0.5",
    ):
        assert part in proxy
    assert scaler_module.queue_proxy_env(t, "iris-predictor-00002-1") == {
        "SERVING_REVISION": "iris-predictor-00002",
        "SERVING_NAMESPACE": "ns",
        "SERVING_SERVICE": "iris",
        "SERVING_CONFIGURATION": "iris-predictor",
        "SERVING_POD": "iris-predictor-00002-1",
    }
    no_grpc = Ports(http=1, grpc=None, queue=3, queue_grpc=None, admin=5, stats=6, metrics=7)
    assert scaler_module.model_server_argv(t, no_grpc)[7:9] == ["--grpc-port", "-1"]
    assert "grpc" not in " ".join(scaler_module.queue_proxy_argv(t, no_grpc, 1.0))


def test_ports_are_distinct_among_running_replicas_and_reused_once_released(monkeypatch, tmp_path):
    offered = iter([5000, 5000, 5001, 5002, 5003, 5004, 5005, 5006, 5001, 5007, 5008, 5009, 5010, 5011])
    monkeypatch.setattr(scaler_module, "free_port", lambda host: next(offered))
    scaler = LocalScaler(log_dir=tmp_path)
    first = scaler.take_ports(grpc=True)  # the OS offered 5000 twice in a row
    assert list(first) == [5000, 5001, 5002, 5003, 5004, 5005, 5006]
    assert list(scaler.take_ports(grpc=False)) == [5007, 5008, 5009, 5010, 5011]  # 5001 is the first's
    scaler.release_ports(first)
    offered = iter([5000, 5001, 5002, 5003, 5004])
    assert list(scaler.take_ports(grpc=False)) == [5000, 5001, 5002, 5003, 5004]


def test_restart_delay_doubles_per_crash_in_a_row_up_to_the_cap():
    assert [scaler_module.restart_delay(n, 0.5, 30.0) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


async def test_scale_validates_and_a_closed_scaler_refuses(tmp_path):
    scaler = LocalScaler(log_dir=tmp_path)
    with pytest.raises(ValueError, match=">= 0"):
        await scaler.scale(template(tmp_path), -1)
    await scaler.scale(template(tmp_path), 0)  # nothing to stop: nothing happens
    assert repr(scaler) == "<LocalScaler empty stopping=0>" and scaler.replicas("sklearn-iris-predictor-00001") == []
    await scaler.close()
    with pytest.raises(RuntimeError, match="closed"):
        await scaler.scale(template(tmp_path), 1)


# -- real processes ------------------------------------------------------------------------------------------------
class Changes:
    """on_change as the controller would use it: every call, with what replicas() said at that moment."""

    def __init__(self) -> None:
        self.scaler: LocalScaler | None = None
        self.seen: list[list[Replica]] = []

    def __call__(self) -> None:
        assert self.scaler is not None
        self.seen.append(self.scaler.replicas("sklearn-iris-predictor-00001"))


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
async def scaler(tmp_path: Path, changes: Changes) -> AsyncIterator[LocalScaler]:
    """A LocalScaler that reports to ``changes``; afterwards, close() must leave no process."""
    local = LocalScaler(on_change=changes, log_dir=tmp_path / "logs", backoff=0.1)
    changes.scaler = local
    try:
        yield local
    finally:
        pids = list(local.pids().values())
        await local.close()
        assert local.pids() == {}
        assert not [pid for pid in pids if alive(pid)]


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (a reaper other than us may be slow to collect it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout} s")
        await asyncio.sleep(0.02)


async def wait_for_async(read: Callable, condition: Callable[[float], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition(await read()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout} s")
        await asyncio.sleep(0.02)


def all_ready(scaler: LocalScaler, revision: str, count: int) -> Callable[[], bool]:
    def check() -> bool:
        replicas = scaler.replicas(revision)
        return len(replicas) == count and all(r.ready for r in replicas)

    return check


async def predict(http: aiohttp.ClientSession, replica: Replica) -> tuple[int, object]:
    async with http.post(f"http://{replica.http}{PREDICT}", json=IRIS) as response:
        return response.status, await response.json()


async def test_two_replicas_serve_and_one_whose_model_server_is_killed_comes_back(scaler, changes, iris_repository):
    t = template(iris_repository)
    await scaler.scale(t, 2)
    await wait_for(all_ready(scaler, t.revision, 2))
    first, second = scaler.replicas(t.revision)
    assert (first.name, second.name) == (f"{t.revision}-1", f"{t.revision}-2")
    assert repr(scaler) == f"<LocalScaler {t.revision}=2/2 stopping=0>"
    pids = scaler.pids()
    assert all(os.getsid(pid) == pid for pid in pids.values())  # own sessions: a terminal's Ctrl-C misses them
    async with aiohttp.ClientSession() as http:
        assert [await predict(http, r) for r in (first, second)] == [(200, {"predictions": [1]})] * 2
        async with http.get(f"http://{first.metrics}/metrics") as response:
            metrics = await response.text()
    assert f'revision_name="{t.revision}"' in metrics and f'pod_name="{first.name}"' in metrics
    client = grpcclient.InferenceServerClient(second.grpc)
    try:
        assert await client.is_model_ready("sklearn-iris")
    finally:
        await client.close()

    seen_before = len(changes.seen)
    os.kill(pids[f"{first.name}/model-server"], signal.SIGKILL)
    await wait_for(lambda: scaler.replicas(t.revision)[0].restarts == 1)
    await wait_for(all_ready(scaler, t.revision, 2))
    restarted, untouched = scaler.replicas(t.revision)
    assert restarted.name == first.name and restarted.http != first.http and untouched == second
    marked = [s[0].ready for s in changes.seen[seen_before:]]
    assert marked == [False, True]  # not ready at once, ready again once restarted: two calls of on_change
    assert not alive(pids[f"{first.name}/queue-proxy"])  # the other process of the crashed replica was stopped
    assert (scaler.log_dir / f"{first.name}.model-server.log").read_text().count(" start ") == 2
    async with aiohttp.ClientSession() as http:
        assert await predict(http, restarted) == (200, {"predictions": [1]})

    calls = len(changes.seen)
    await scaler.scale(t, 2)  # idempotent: nothing starts, nothing is announced
    assert scaler.replicas(t.revision) == [restarted, untouched] and len(changes.seen) == calls


async def test_a_replica_whose_queue_proxy_is_killed_is_restarted_and_serves_again(scaler, changes, iris_repository):
    t = template(iris_repository)
    await scaler.scale(t, 1)
    await wait_for(all_ready(scaler, t.revision, 1))
    (first,) = scaler.replicas(t.revision)
    assert first.restarts == 0
    pids = scaler.pids()
    async with aiohttp.ClientSession() as http:
        assert await predict(http, first) == (200, {"predictions": [1]})

    seen_before = len(changes.seen)
    os.kill(pids[f"{first.name}/queue-proxy"], signal.SIGKILL)
    await wait_for(lambda: scaler.replicas(t.revision)[0].restarts == 1)
    await wait_for(all_ready(scaler, t.revision, 1))
    (restarted,) = scaler.replicas(t.revision)
    assert restarted.name == first.name and restarted.restarts == 1
    assert restarted.http != first.http and restarted.grpc != first.grpc
    marked = [s[0].ready for s in changes.seen[seen_before:]]
    assert [ready for ready, _ in itertools.groupby(marked)] == [False, True]  # not ready at once, then ready again
    assert not alive(pids[f"{first.name}/model-server"])  # the replica's model server was stopped with it
    assert set(scaler.pids().values()).isdisjoint(pids.values())  # both processes are new ones
    for process in ("queue-proxy", "model-server"):
        assert (scaler.log_dir / f"{first.name}.{process}.log").read_text().count(" start ") == 2
    async with aiohttp.ClientSession() as http:
        assert await predict(http, restarted) == (200, {"predictions": [1]})
    client = grpcclient.InferenceServerClient(restarted.grpc)
    try:
        assert await client.is_model_ready("sklearn-iris")  # its gRPC port serves again too
    finally:
        await client.close()


@pytest.fixture
def slow_repository(tmp_path: Path, iris_repository: Path) -> Path:
    return build_slow_repository(tmp_path / "models", iris_repository, instances=2)


async def in_flight(http: aiohttp.ClientSession, replica: Replica) -> float:
    async with http.get(f"http://{replica.metrics}/metrics") as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("queue_requests_in_flight{")
    )


async def test_scale_down_drains_the_removed_replica_and_its_request_in_flight_completes(
    scaler, changes, slow_repository, caplog
):
    caplog.set_level(logging.INFO, logger="controller.scaler")
    t = template(slow_repository, grpc=False)
    await scaler.scale(t, 2)
    await wait_for(all_ready(scaler, t.revision, 2))
    replicas = scaler.replicas(t.revision)
    assert all(r.grpc is None for r in replicas)
    pids = scaler.pids()
    async with aiohttp.ClientSession() as http:

        async def slow(replica: Replica) -> int:
            async with http.post(f"http://{replica.http}/v2/models/slow/infer", json=SLOW) as response:
                await response.read()
                return response.status

        calls = [asyncio.create_task(slow(r)) for r in replicas]  # one on each: whichever goes, it has one
        for r in replicas:
            await wait_for_async(lambda r=r: in_flight(http, r), lambda value: value == 1)
        await scaler.scale(t, 1)
        (kept,) = scaler.replicas(t.revision)
        removed = next(r for r in replicas if r.name != kept.name)
        assert changes.seen[-1] == [kept]  # the gateway hears of it before any signal is sent
        assert repr(scaler) == f"<LocalScaler {t.revision}=1/1 stopping=1>"
        assert not any(c.done() for c in calls), "the slow requests should still be running"
        assert await asyncio.gather(*calls) == [200, 200]
    await scaler.wait_stopped()
    assert repr(scaler) == f"<LocalScaler {t.revision}=1/1 stopping=0>"
    gone = [pids[f"{removed.name}/{name}"] for name in ("queue-proxy", "model-server")]
    assert not any(alive(pid) for pid in gone)
    assert alive(pids[f"{kept.name}/queue-proxy"]) and alive(pids[f"{kept.name}/model-server"])
    exits = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{removed.name}/")]
    assert exits == [f"{removed.name}/queue-proxy exited (code 0)", f"{removed.name}/model-server exited (code 0)"]


async def test_a_crash_loop_is_restarted_with_growing_delays_and_close_stops_it(
    scaler, changes, iris_repository, caplog
):
    t = template(iris_repository, server_args=("--no-such-flag",))
    await scaler.scale(t, 1)
    await wait_for(lambda: scaler.replicas(t.revision)[0].restarts >= 2, timeout=15)
    (replica,) = scaler.replicas(t.revision)
    assert not replica.ready
    assert not any(s and s[0].ready for s in changes.seen)
    log = (scaler.log_dir / f"{replica.name}.model-server.log").read_text()
    assert "unrecognized arguments: --no-such-flag" in log
    crashes = [r.getMessage() for r in caplog.records if "exited (code 2)" in r.getMessage()]
    assert "restart 1 in 0.1 s" in crashes[0] and "restart 2 in 0.2 s" in crashes[1]  # the fixture's backoff: 0.1
    assert "unrecognized arguments" in crashes[0]  # the log line shows the process's last output
    started = time.monotonic()
    await scaler.close()  # in a backoff wait or with processes starting: either way it ends promptly
    assert time.monotonic() - started < 5 and scaler.pids() == {}


async def test_a_port_taken_between_picking_and_binding_restarts_the_replica_on_new_ports(
    scaler, iris_repository, monkeypatch
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        picks = iter([free_port(), port])  # without gRPC: the model server's, then the queue's
        monkeypatch.setattr(scaler_module, "free_port", lambda host: next(picks, None) or free_port(host))
        t = template(iris_repository, grpc=False)
        await scaler.scale(t, 1)
        await wait_for(all_ready(scaler, t.revision, 1))
    (replica,) = scaler.replicas(t.revision)
    assert replica.restarts == 1 and replica.http != f"127.0.0.1:{port}"
    assert "address already in use" in (scaler.log_dir / f"{replica.name}.queue-proxy.log").read_text()


CONTROLLER = """
import asyncio, json, sys
from pathlib import Path
from controller.scaler import LocalScaler, ReplicaTemplate

async def main():
    scaler = LocalScaler(log_dir=Path(sys.argv[1]), drain_quiet=0.1)
    await scaler.scale(ReplicaTemplate("iris-00001", "default", "iris", "predictor",
                                       ("--model-repository", sys.argv[2]), grpc=False), 1)
    while not all(r.ready for r in scaler.replicas("iris-00001")):
        await asyncio.sleep(0.05)
    print(json.dumps(scaler.pids()), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_killed_controller_leaves_no_replica_process_behind(tmp_path, iris_repository):
    controller = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CONTROLLER,
        str(tmp_path),
        str(iris_repository),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        pids = json.loads(await asyncio.wait_for(controller.stdout.readline(), 30))
        assert len(pids) == 2 and all(alive(pid) for pid in pids.values())
    finally:
        controller.kill()
        await controller.wait()
    await wait_for(lambda: not any(alive(pid) for pid in pids.values()), timeout=15)
