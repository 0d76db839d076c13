"""The controller's revision and traffic rules, without processes: a scripted Scaler whose replicas turn ready when
the test says so (the real LocalScaler is tested in test_scaler.py and end to end in tests/e2e)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter

import pytest

from controller import up
from controller.controller import Controller
from controller.spec import SpecError
from gateway.routing import Identity, RoutingTable
from tests.controller.scripted import GATEWAY, ScriptedScaler, spec


@pytest.fixture
async def setup():
    scaler = ScriptedScaler()
    controller = Controller(scaler, GATEWAY, retire_delay=0)
    scaler.controller = controller
    yield controller, scaler
    await controller.close()


def traffic(controller: Controller, component: str = "predictor") -> list[tuple[str, int, str | None]]:
    (service,) = controller.state.services
    return [(t.revision, t.percent, t.tag) for t in service.components[component]]


async def apply(controller: Controller, specs):
    """Apply, then let the scale calls it started run."""
    applied = await controller.apply(specs)
    await settle()
    return applied


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_new_service_gets_one_revision_at_100_percent(setup, tmp_path):
    controller, scaler = setup
    applied = await apply(controller, spec(tmp_path, 1, min_replicas=2))
    assert applied[0].created == ("adder-predictor-00001",)
    await settle()
    assert scaler.calls == [("adder-predictor-00001", 2)]
    assert traffic(controller) == [("adder-predictor-00001", 100, "latest")]
    assert not controller.ready()
    scaler.ready("adder-predictor-00001")
    assert controller.ready()
    revision = controller.state.revisions["adder-predictor-00001"]
    assert [e.http for e in revision.ready_endpoints] == ["127.0.0.1:1001", "127.0.0.1:1002"]
    assert (revision.service, revision.component, revision.timeout) == ("adder", "predictor", 300.0)


async def test_reapplying_the_same_spec_creates_nothing(setup, tmp_path):
    controller, scaler = setup
    await apply(controller, spec(tmp_path, 1))
    version = controller.state.version
    applied = await apply(controller, spec(tmp_path, 1))
    assert applied[0].created == ()
    assert controller.state.version == version


async def test_a_changed_spec_switches_only_once_the_new_revision_is_ready(setup, tmp_path):
    controller, scaler = setup
    await apply(controller, spec(tmp_path, 1))
    scaler.ready("adder-predictor-00001")
    await apply(controller, spec(tmp_path, 2))
    await settle()
    assert traffic(controller) == [("adder-predictor-00001", 100, "prev"), ("adder-predictor-00002", 0, "latest")]
    assert ("adder-predictor-00001", 0) not in scaler.calls
    scaler.ready("adder-predictor-00002")
    assert traffic(controller) == [("adder-predictor-00002", 100, "latest")]
    await settle()
    assert ("adder-predictor-00001", 0) in scaler.calls  # retired once no traffic points at it
    assert "adder-predictor-00001" not in controller.state.revisions


async def canary_at_10(controller, scaler, tmp_path) -> None:
    """Revision 1 ready and rolled out, then revision 2 applied with canaryTrafficPercent 10 and ready."""
    await apply(controller, spec(tmp_path, 1))
    scaler.ready("adder-predictor-00001")
    await apply(controller, spec(tmp_path, 2, canary=10))
    scaler.ready("adder-predictor-00002")


async def test_canary_splits_and_a_canary_only_change_moves_traffic_without_a_revision(setup, tmp_path):
    controller, scaler = setup
    await canary_at_10(controller, scaler, tmp_path)
    assert traffic(controller) == [("adder-predictor-00001", 90, "prev"), ("adder-predictor-00002", 10, "latest")]
    applied = await apply(controller, spec(tmp_path, 2, canary=50))
    assert applied[0].created == ()
    assert traffic(controller) == [("adder-predictor-00001", 50, "prev"), ("adder-predictor-00002", 50, "latest")]
    await apply(controller, spec(tmp_path, 2))  # promoted: the canary field removed
    assert traffic(controller) == [("adder-predictor-00002", 100, "latest")]


async def test_a_spec_applied_mid_canary_splits_against_the_rolled_out_revision_not_the_canary(setup, tmp_path):
    controller, scaler = setup
    await canary_at_10(controller, scaler, tmp_path)
    assert traffic(controller) == [("adder-predictor-00001", 90, "prev"), ("adder-predictor-00002", 10, "latest")]
    applied = await apply(controller, spec(tmp_path, 3, canary=10))
    assert applied[0].created == ("adder-predictor-00003",)
    # while revision 3 starts, the canary it replaces keeps its 10 % (Knative: the latest ready revision)
    assert traffic(controller) == [
        ("adder-predictor-00001", 90, "prev"),
        ("adder-predictor-00002", 10, None),
        ("adder-predictor-00003", 0, "latest"),
    ]
    table = RoutingTable(controller.state, Identity.of("127.0.0.1", (8080,)), rng=random.Random(3))
    picks = Counter(table.route("adder-predictor.default.example.com", "/").name for _ in range(1000))
    assert set(picks) == {"adder-predictor-00001", "adder-predictor-00002"}  # the gateway splits 90/10 between them
    assert 60 <= picks["adder-predictor-00002"] <= 140
    await settle()
    assert ("adder-predictor-00002", 0) not in scaler.calls
    scaler.ready("adder-predictor-00002", False)  # and gives it back when it stops being ready
    assert traffic(controller) == [("adder-predictor-00001", 100, "prev"), ("adder-predictor-00003", 0, "latest")]
    scaler.ready("adder-predictor-00002")
    scaler.ready("adder-predictor-00003")
    assert traffic(controller) == [("adder-predictor-00001", 90, "prev"), ("adder-predictor-00003", 10, "latest")]
    await settle()
    assert ("adder-predictor-00002", 0) in scaler.calls  # the unpromoted canary: 0 %, retired
    assert ("adder-predictor-00001", 0) not in scaler.calls
    assert "adder-predictor-00002" not in controller.state.revisions


def rollout(controller: Controller) -> dict[str, tuple[bool, bool, int]]:
    """Each predictor revision in the status report: (latest, rolled_out, percent)."""
    (service,) = controller.status()["services"]
    return {r["revision"]: (r["latest"], r["rolled_out"], r["percent"]) for r in service["components"]["predictor"]}


async def test_status_names_the_latest_and_the_rolled_out_revision_through_a_canary(setup, tmp_path):
    controller, scaler = setup
    await apply(controller, spec(tmp_path, 1))
    assert rollout(controller) == {"adder-predictor-00001": (True, False, 100)}  # not ready: not rolled out yet
    await canary_at_10(controller, scaler, tmp_path)
    canary = {"adder-predictor-00001": (False, True, 90), "adder-predictor-00002": (True, False, 10)}
    assert rollout(controller) == canary
    rows = [line.split() for line in up.table(controller.status()).splitlines()]
    assert [row[5] for row in rows] == ["ROLLOUT", "rolled-out", "latest"]
    await apply(controller, spec(tmp_path, 3, canary=10))
    scaler.ready("adder-predictor-00003")
    report = rollout(controller)
    assert report["adder-predictor-00001"] == (False, True, 90) and report["adder-predictor-00003"] == (True, False, 10)
    await apply(controller, spec(tmp_path, 3))  # promoted
    assert rollout(controller)["adder-predictor-00003"] == (True, True, 100)


async def test_promoting_a_canary_makes_it_the_rolled_out_revision(setup, tmp_path):
    controller, scaler = setup
    await canary_at_10(controller, scaler, tmp_path)
    await apply(controller, spec(tmp_path, 2))  # promoted: canaryTrafficPercent removed
    assert traffic(controller) == [("adder-predictor-00002", 100, "latest")]
    await settle()
    assert ("adder-predictor-00001", 0) in scaler.calls
    await apply(controller, spec(tmp_path, 3, canary=20))
    scaler.ready("adder-predictor-00003")
    assert traffic(controller) == [("adder-predictor-00002", 80, "prev"), ("adder-predictor-00003", 20, "latest")]
    await apply(controller, spec(tmp_path, 3, canary=100))  # 100 % promotes too, as in KServe
    await apply(controller, spec(tmp_path, 3, canary=30))
    assert traffic(controller) == [("adder-predictor-00003", 100, "latest")]


async def test_a_restarting_rolled_out_revision_gives_its_share_to_the_canary_and_keeps_its_tag(setup, tmp_path):
    controller, scaler = setup
    await canary_at_10(controller, scaler, tmp_path)
    scaler.ready("adder-predictor-00001", False)
    assert traffic(controller) == [("adder-predictor-00001", 0, "prev"), ("adder-predictor-00002", 100, "latest")]
    await settle()
    assert ("adder-predictor-00001", 0) not in scaler.calls  # not retired, and not replaced as the stable side
    scaler.ready("adder-predictor-00001")
    assert traffic(controller) == [("adder-predictor-00001", 90, "prev"), ("adder-predictor-00002", 10, "latest")]


async def test_apply_returns_and_logs_the_specs_warnings(setup, tmp_path, caplog):
    controller, scaler = setup
    with caplog.at_level(logging.WARNING, "controller.controller"):
        applied = await apply(controller, spec(tmp_path, 1, extra="maxReplicas: 3"))
    warning = "spec.predictor.maxReplicas: recorded; the local backend runs max(minReplicas, 1) replicas until the "
    warning += "autoscaler lands"
    assert applied[0].warnings == (warning,)
    assert [r.getMessage() for r in caplog.records] == [f"default/adder: {warning}"]
    assert scaler.calls == [("adder-predictor-00001", 1)]


async def test_a_transformer_calls_its_predictor_through_the_gateway_by_host(setup, tmp_path):
    controller, scaler = setup
    await apply(controller, spec(tmp_path, 1, transformer=True))
    await settle()
    args = scaler.templates["adder-transformer-00001"].server_args
    at = args.index("--predictor-host")
    assert args[at + 1] == "127.0.0.1:8080"
    assert args[args.index("--predictor-authority") + 1] == "adder-predictor.default.example.com"
    (service,) = controller.state.services
    assert service.entry == "transformer" and service.models == ("adder",)


async def test_the_long_poll_answers_on_a_change_or_times_out(setup, tmp_path):
    controller, scaler = setup
    await apply(controller, spec(tmp_path, 1))
    version = controller.state.version
    assert await controller.wait_state(version, 0.05) is None
    waiting = asyncio.create_task(controller.wait_state(version, 5))
    await asyncio.sleep(0.01)
    scaler.ready("adder-predictor-00001")
    state = await waiting
    assert state is not None and state.version > version


async def test_removing_a_component_is_refused_and_changes_nothing(setup, tmp_path):
    controller, scaler = setup
    await apply(controller, spec(tmp_path, 1, transformer=True))
    version = controller.state.version
    with pytest.raises(SpecError, match="removing components"):
        await apply(controller, spec(tmp_path, 2))
    assert controller.state.version == version


def test_up_progress_lines_say_when_a_replica_keeps_restarting():
    from controller.stack import _lines

    replica = {"ready": False, "restarts": 2}
    report = {
        "services": [
            {
                "namespace": "default",
                "name": "adder",
                "components": {
                    "predictor": [{"revision": "adder-predictor-00001", "desired": 1, "replicas": [replica]}]
                },
            }
        ]
    }
    ((key, line),) = _lines(report)
    assert key == "adder-predictor-00001"
    assert (
        line == "default/adder predictor adder-predictor-00001: 0/1 replicas ready (starting, 2 restarts: see its logs)"
    )
