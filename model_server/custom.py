"""User model classes: finding ``package.module:Class`` (or ``path/to/file.py:Class``), and building every model.

The repository calls a :class:`ModelFactory` for each model version it serves. The class is the version's
``model_class`` (its config.yaml, or ``--model-class``), else the onnxruntime model; the class's
:meth:`~model_server.model.Model.create` builds it, and every model gets the server's predictor client (the
``--predictor-host`` connection, shared by all models), if there is one.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from model_server.model import Model
from model_server.model_config import ModelConfig
from model_server.onnx_model import OnnxModel
from model_server.predictor_client import PredictorClient


def import_class(spec: str) -> type[Model]:
    """The :class:`Model` subclass named by ``package.module:Class`` or ``path/to/file.py:Class``.

    Modules are looked up from the working directory too, as uvicorn does for ``module:app``, so that the
    ``servelane`` script finds a user's package where ``python -m`` would.
    """
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ValueError(f"model class {spec!r} is not 'package.module:Class' or 'path/to/file.py:Class'")
    if where.endswith(".py"):
        module = _module_from_file(Path(where))
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(where)
    cls = getattr(module, name, None)
    if cls is None:
        raise ValueError(f"{where} has no attribute {name!r}")
    if not isinstance(cls, type) or not issubclass(cls, Model):
        raise TypeError(f"{spec} is not a subclass of model_server.model.Model")
    return cls


def _module_from_file(path: Path) -> object:
    name = f"servelane_user_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name while it executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class ModelFactory:
    def __init__(self, predictor: PredictorClient | None = None) -> None:
        self.predictor = predictor

    def __repr__(self) -> str:
        return f"<ModelFactory predictor={self.predictor!r}>"

    def __call__(self, name: str, version: str, path: Path | None, config: ModelConfig) -> Model:
        cls: type[Model] = import_class(config.model_class) if config.model_class else OnnxModel
        model = cls.create(name, version, path, config)
        if not isinstance(model, Model):
            raise TypeError(f"{cls.__name__}.create returned {type(model).__name__}, not a Model")
        model.predictor = self.predictor
        return model
