"""A scripted Scaler and a spec maker for the controller's tests: replicas without processes, ready when a test says
so (the real LocalScaler is tested in test_scaler.py and end to end in tests/e2e)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from controller.controller import Controller, GatewayAddress
from controller.scaler import Replica, ReplicaTemplate
from controller.spec import InferenceServiceSpec, load_specs
from tests.models import build_add

GATEWAY = GatewayAddress("127.0.0.1:8080", "127.0.0.1:8081")


class ScriptedScaler:
    """Replicas appear when scaled; ``ready(revision)`` makes them ready (or not); every scale call is recorded.
    Each replica's stats address is ``stats`` (None: none)."""

    def __init__(self, stats: str | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.templates: dict[str, ReplicaTemplate] = {}
        self.stats = stats
        self._replicas: dict[str, list[Replica]] = {}
        self.controller: Controller | None = None

    async def scale(self, template: ReplicaTemplate, replicas: int) -> None:
        self.calls.append((template.revision, replicas))
        self.templates[template.revision] = template
        have = self._replicas.setdefault(template.revision, [])
        while len(have) < replicas:
            n = len(have) + 1
            have.append(Replica(f"{template.revision}-{n}", f"127.0.0.1:{1000 + n}", None, False, stats=self.stats))
        del have[replicas:]
        if self.controller is not None:
            self.controller.changed()  # as the LocalScaler's on_change

    def replicas(self, revision: str) -> list[Replica]:
        return list(self._replicas.get(revision, ()))

    async def close(self) -> None:
        self._replicas.clear()

    def ready(self, revision: str, ready: bool = True) -> None:
        self._replicas[revision] = [dataclasses.replace(r, ready=ready) for r in self._replicas[revision]]
        assert self.controller is not None
        self.controller.changed()


def spec_text(
    root: Path,
    offset: int,
    *,
    canary: int | None = None,
    transformer: bool = False,
    min_replicas: int = 1,
    extra: str = "",
) -> str:
    """The YAML of an "adder" service whose model adds ``offset``, built under ``root``; ``extra``: predictor lines."""
    build_add(root / f"add-{offset}" / "model.onnx", float(offset))
    text = f"""
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: adder}}
spec:
  predictor:
    minReplicas: {min_replicas}
    {"" if canary is None else f"canaryTrafficPercent: {canary}"}
    {extra}
    model: {{modelFormat: {{name: onnx}}, storageUri: ./add-{offset}, protocolVersion: v2}}
"""
    if transformer:
        model_class = f"{Path(__file__).parents[2]}/examples/iris_transformer.py:IrisTransformer"
        text += f"""  transformer:
    containers: [{{name: kserve-container, args: ["--model-class", "{model_class}"]}}]
"""
    return text


def spec(root: Path, offset: int, **options: Any) -> list[InferenceServiceSpec]:
    return load_specs(spec_text(root, offset, **options), base_dir=root)
