"""``--model-name NAME --model-path DIR``: one model folder in Triton's layout served under a name of its own (the
controller serves an InferenceService's storageUri folder this way, named after the service). No sockets."""

from __future__ import annotations

from pathlib import Path

from model_server.__main__ import parse_args
from model_server.model_config import ModelConfig
from model_server.repository import ModelRepository, Source
from tests.conftest import IRIS_REPOSITORY
from tests.models import build_add


async def test_a_model_folder_is_served_under_the_given_name_with_its_versions_and_config(tmp_path: Path):
    build_add(tmp_path / "adder" / "1" / "model.onnx", offset=1.0)
    build_add(tmp_path / "adder" / "2" / "model.onnx", offset=2.0)
    (tmp_path / "adder" / "config.yaml").write_text("instances: 2\n")
    config = parse_args(["--model-name", "plus", "--model-path", str(tmp_path / "adder")])
    repository = ModelRepository(config.model_repository, defaults=config.model_defaults)
    repository.add_file(config.model_name, config.model_path)
    try:
        await repository.load_all()
        assert repository.names() == ["plus"]
        assert list(repository.entry("plus").models) == ["1", "2"]
        assert repository.get("plus").version == "2"
        assert repository.get("plus").config.instances == 2
    finally:
        await repository.close()


async def test_the_iris_example_folder_under_an_inference_service_name():
    repository = ModelRepository(None)
    repository.add_file("my-iris", IRIS_REPOSITORY / "sklearn-iris")
    try:
        await repository.load_all()
        assert repository.all_ready() and repository.names() == ["my-iris"]
    finally:
        await repository.close()


async def test_a_file_stays_one_model_and_a_class_gets_the_folder_itself(tmp_path: Path):
    repository = ModelRepository(None)
    repository.add_file("one", build_add(tmp_path / "m.onnx"))
    try:
        await repository.load_all()
        assert list(repository.entry("one").models) == ["1"]
    finally:
        await repository.close()
    with_class = ModelRepository(None, defaults=ModelConfig(model_class="pkg.mod:Cls"))
    with_class.add_file("cls", tmp_path)
    assert with_class._sources["cls"] == Source("cls", file=tmp_path, single=True)
