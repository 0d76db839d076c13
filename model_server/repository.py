"""The model repository: which models exist, their versions, their state, and loading and unloading them.

Layout (Triton's): ``<root>/<model>/<version>/model.onnx`` with numeric version folders (not starting with 0)
and an optional ``<root>/<model>/config.yaml``. A model whose config names a ``model_class`` is that Python class;
it gets its version folder, or the model folder itself when there are no version folders (served as version 1).
A single model can also be served with no root, under a name of its own: from a file, from one model folder in
that layout, or a class with or without a path. Keys a config.yaml leaves out take the server's defaults (its
flags). Loading runs off the event loop (an ``async def load`` runs on it); a model that fails to load, or is not
ready once ``load()`` returns, stays listed as UNAVAILABLE with the reason. Unversioned requests go to the highest
version served.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ModelNotFound, ModelNotReady, NotFound
from model_server import custom
from model_server.model import Model
from model_server.model_config import ModelConfig

log = logging.getLogger(__name__)

READY = "READY"
LOADING = "LOADING"
UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class Entry:
    name: str
    state: str = LOADING
    reason: str = ""
    models: dict[str, Model] = field(default_factory=dict)  # version -> model, ascending
    default: Model | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """Where a model's versions come from: a folder in the repository, or a single model (a file, or a class)."""

    name: str
    folder: Path | None = None
    file: Path | None = None
    single: bool = False


ModelFactory = Callable[[str, str, Path | None, ModelConfig], Model]


class ModelRepository:
    def __init__(
        self, root: Path | None = None, *, factory: ModelFactory | None = None, defaults: ModelConfig | None = None
    ) -> None:
        self.root = root
        self.defaults = defaults or ModelConfig()
        self._factory = factory or custom.ModelFactory()
        self._sources: dict[str, Source] = {}
        self._entries: dict[str, Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._initialized = False  # not ready before the first load_all() (or register()) has finished

    def __repr__(self) -> str:
        states = ", ".join(f"{e.name}={e.state}" for e in self._entries.values())
        return f"<ModelRepository {self.root} [{states}]>"

    def add_file(self, name: str, path: Path | None) -> None:
        """Serve one model outside the root under ``name``: a file, a model folder in the repository's layout (its
        version folders and config.yaml, as if it were ``<root>/<name>``), or (with a ``model_class`` default) a
        class, path or not."""
        if path is not None and self.defaults.model_class is None and path.is_dir():
            self._sources[name] = Source(name, folder=path)
        else:
            self._sources[name] = Source(name, file=path, single=True)

    def scan(self) -> list[str]:
        """Names of the model folders under the root, sorted."""
        if self.root is None:
            return sorted(self._sources)
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for name in found:
            self._sources.setdefault(name, Source(name, folder=self.root / name))
        return sorted(set(found) | {n for n, s in self._sources.items() if s.single})

    async def load_all(self) -> None:
        await asyncio.gather(*(self.load(name, raise_on_failure=False) for name in self.scan()))
        self._initialized = True

    async def load(self, name: str, *, raise_on_failure: bool = True) -> Entry:
        """(Re)load every served version of ``name``; the old versions keep serving until the new ones are ready."""
        source = self._sources.get(name)
        if source is None and self.root is not None and (self.root / name).is_dir():
            source = self._sources.setdefault(name, Source(name, folder=self.root / name))
        if source is not None and source.folder is not None and not source.folder.is_dir():
            del self._sources[name]
            if name in self._entries and self._entries[name].state != READY:
                del self._entries[name]
            source = None
        if source is None:
            raise NotFound(f"Model with name {name} does not exist in the model repository.")
        async with self._locks.setdefault(name, asyncio.Lock()):
            previous = self._entries.get(name)
            if previous is None:
                self._entries[name] = Entry(name)
            try:
                models = await asyncio.to_thread(self._build, source, asyncio.get_running_loop())
            except Exception as exc:  # a broken model must not take the server down
                reason = f"{type(exc).__name__}: {exc}"
                log.error("model %s failed to load: %s", name, reason)
                if previous is None or previous.state != READY:
                    self._entries[name] = Entry(name, UNAVAILABLE, reason)
                if raise_on_failure:
                    raise ModelNotReady(name, f"Loading failed: {reason}") from None
                return self._entries[name]
            entry = Entry(name, READY, "", models, models[max(models, key=int)])
            self._entries[name] = entry
            if previous is not None:
                await _release_off_loop(previous)
            log.info("model %s ready, versions %s", name, list(models))
            return entry

    def _build(self, source: Source, loop: asyncio.AbstractEventLoop) -> dict[str, Model]:
        """Build and load every served version (in a worker thread; ``loop`` runs async ``load()`` methods)."""
        if source.single:
            return {"1": self._load_one(source.name, "1", source.file, self.defaults, loop)}
        assert source.folder is not None
        config = ModelConfig.load(source.folder, base=self.defaults)
        versions = config.select_versions(
            [int(p.name) for p in source.folder.iterdir() if p.is_dir() and p.name.isdigit() and p.name[0] != "0"]
        )
        if not versions and config.model_class:
            return {"1": self._load_one(source.name, "1", source.folder, config, loop)}
        if not versions:
            raise FileNotFoundError(f"no version folders to serve under {source.folder}")
        models: dict[str, Model] = {}
        try:
            for version in versions:
                folder = source.folder / str(version)
                path = folder if config.model_class else folder / config.model_file
                models[str(version)] = self._load_one(source.name, str(version), path, config, loop)
        except BaseException:
            for model in models.values():
                _unload(model, loop)
            raise
        return models

    def _load_one(
        self, name: str, version: str, path: Path | None, config: ModelConfig, loop: asyncio.AbstractEventLoop
    ) -> Model:
        model = self._factory(name, version, path, config)
        try:
            if inspect.iscoroutinefunction(model.load):
                asyncio.run_coroutine_threadsafe(model.load(), loop).result()
            else:
                model.load()
            if not model.ready:
                raise RuntimeError(f"{type(model).__name__}.load() returned, but the model is not ready")
            asyncio.run_coroutine_threadsafe(model.describe(), loop).result()
        except BaseException:
            _unload(model, loop)
            raise
        return model

    async def unload(self, name: str) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self._entries.pop(name, None)
            if entry is None:
                raise ModelNotFound(name)
            await _release_off_loop(entry)
            log.info("model %s unloaded", name)

    def get(self, name: str, version: str | None = None) -> Model:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(name)
        if entry.state != READY:
            raise ModelNotReady(name)
        if not version:
            assert entry.default is not None
            return entry.default
        model = entry.models.get(version)
        if model is None:
            raise ModelNotFound(name, version)
        return model

    def register(self, model: Model) -> None:
        """Serve an already-built model object (custom model classes, tests)."""
        entry = self._entries.setdefault(model.name, Entry(model.name))
        entry.models[model.version] = model
        entry.default = entry.models[max(entry.models, key=lambda v: int(v) if v.isdigit() else 0)]
        entry.state = READY if all(m.ready for m in entry.models.values()) else UNAVAILABLE
        self._initialized = True

    def entry(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def has(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def all_ready(self) -> bool:
        return self._initialized and all(entry.state == READY for entry in self._entries.values())

    def index(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = []
        for name in sorted(set(self.scan()) | set(self._entries)):
            entry = self._entries.get(name)
            if entry is None:
                rows.append({"name": name, "state": UNAVAILABLE, "reason": "unloaded"})
            elif not entry.models:
                rows.append({"name": name, "state": entry.state, "reason": entry.reason})
            else:
                rows.extend({"name": name, "version": v, "state": entry.state, "reason": ""} for v in entry.models)
        return rows

    async def close(self) -> None:
        entries = list(self._entries.values())
        self._entries.clear()
        for entry in entries:
            await _release_off_loop(entry)


async def _release_off_loop(entry: Entry) -> None:
    """Unload every version while serving: ``async def unload`` awaited, a plain one on a worker thread."""
    for model in entry.models.values():
        if inspect.iscoroutinefunction(model.unload):
            await model.unload()
        else:
            await asyncio.to_thread(model.unload)


def _unload(model: Model, loop: asyncio.AbstractEventLoop) -> None:
    """Unload a model from a worker thread (a load that failed), running ``async def unload`` on ``loop``."""
    if inspect.iscoroutinefunction(model.unload):
        asyncio.run_coroutine_threadsafe(model.unload(), loop).result()
    else:
        model.unload()
