"""Revisions under ``servelane up``: a changed spec applied under steady load switches with zero failed requests;
a canary split of 90/10 lands within ±4 points over 1,000 requests; tag hosts reach their revision only."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from pathlib import Path

import aiohttp

from tests.models import build_add

SPEC = """apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: adder
spec:
  predictor:
    {canary}model:
      modelFormat:
        name: onnx
      storageUri: ./add-{offset}
"""
BODY = {"instances": [[0.0, 0.0, 0.0, 0.0]]}


def write_spec(root: Path, offset: int, canary: int | None = None) -> Path:
    """The adder service whose answer to zeros is ``offset``: a new model folder per offset (a new revision)."""
    build_add(root / f"add-{offset}" / "1" / "model.onnx", float(offset))
    path = root / "adder.yaml"
    canary_line = "" if canary is None else f"canaryTrafficPercent: {canary}\n    "
    path.write_text(SPEC.format(offset=offset, canary=canary_line))
    return path


async def answer(http: aiohttp.ClientSession, headers: dict[str, str] | None = None) -> tuple[int, float | None]:
    async with http.post("/v1/models/adder:predict", json=BODY, headers=headers or {}) as response:
        if response.status != 200:
            return response.status, None
        return 200, (await response.json())["predictions"][0][0]


def wait_for(up, check, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = up.status()
        if check(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"timed out; last status: {status}")


def revisions(status: dict) -> dict[str, dict]:
    return {r["revision"]: r for s in status["services"] for r in s["components"]["predictor"]}


async def test_reapply_under_load_canary_split_and_tags(servelane_up, tmp_path: Path):
    up = servelane_up(write_spec(tmp_path, 1))
    async with aiohttp.ClientSession(up.base, connector=aiohttp.TCPConnector(limit=64)) as http:
        # 1. a changed model, applied under steady load: no request fails, and the answers move from 1 to 2
        seen: list[tuple[int, float | None]] = []
        stop = asyncio.Event()

        async def load() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline and len(seen) < 200_000:
                seen.append(await answer(http))

        workers = [asyncio.create_task(load()) for _ in range(8)]
        await asyncio.sleep(0.5)
        code, out, err = await asyncio.to_thread(up.cli, "apply", str(write_spec(tmp_path, 2)))
        assert code == 0 and "adder-predictor-00002" in out, err

        def switched(status: dict) -> bool:
            revs = revisions(status)
            return revs.get("adder-predictor-00002", {}).get("percent") == 100 and "adder-predictor-00001" not in revs

        await asyncio.to_thread(wait_for, up, switched)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)
        statuses = collections.Counter(status for status, _ in seen)
        assert statuses == {200: len(seen)}, statuses
        answers = [value for _, value in seen]
        assert set(answers) == {1.0, 2.0} and answers[-1] == 2.0

        # 2. a canary: 10 % to the new revision, 90 % to the previous one
        code, out, err = await asyncio.to_thread(up.cli, "apply", str(write_spec(tmp_path, 3, canary=10)))
        assert code == 0 and "adder-predictor-00003" in out, err
        await asyncio.to_thread(
            wait_for, up, lambda s: revisions(s).get("adder-predictor-00003", {}).get("percent") == 10
        )
        gate = asyncio.Semaphore(16)

        async def one() -> tuple[int, float | None]:
            async with gate:
                return await answer(http)

        split = collections.Counter(await asyncio.gather(*(one() for _ in range(1000))))
        assert set(split) <= {(200, 2.0), (200, 3.0)}, split
        assert 60 <= split[(200, 3.0)] <= 140, split  # 10 % ± 4 points of 1,000

        # 3. tag hosts reach their revision only
        for host, expected in (
            ("latest-adder-predictor.default.example.com", 3.0),
            ("prev-adder-predictor.default.example.com", 2.0),
            ("latest-adder.default.example.com", 3.0),
        ):
            tagged = {await answer(http, {"Host": host}) for _ in range(20)}
            assert tagged == {(200, expected)}, (host, tagged)

    code, still_alive = up.stop(signal.SIGINT)  # Ctrl-C
    assert code == 0 and still_alive == []
