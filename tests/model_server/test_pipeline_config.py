"""The pipeline's configuration without sockets: config.yaml keys for classes, batching and the explainer, the
server flags that give their defaults, and the role flags' checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_server.__main__ import parse_args
from model_server.config import EXPLAINER_CLASS, ModelServerConfig
from model_server.custom import import_class
from model_server.model_config import BatchingConfig, ExplainerConfig, ModelConfig, ModelConfigError


def test_batching_explainer_and_class_keys_parse():
    config = ModelConfig.from_dict({
        "model_class": "pkg.mod:Cls",
        "dynamic_batching": {"max_batch_rows": 32, "max_queue_delay_us": 500, "preferred_batch_rows": [16, 8]},
        "explainer": {"output": "probabilities", "baseline": [0, 1.5]},
    })
    assert config.model_class == "pkg.mod:Cls"
    assert config.dynamic_batching == BatchingConfig(32, 500, (8, 16))
    assert config.explainer == ExplainerConfig("probabilities", (0.0, 1.5))
    assert ModelConfig.from_dict({"explainer": True}).explainer == ExplainerConfig()


@pytest.mark.parametrize("raw, message", [
    ({"dynamic_batching": {"max_queue_delay_us": 5}}, "takes max_batch_rows"),
    ({"dynamic_batching": {"max_batch_rows": 0}}, "at least 1"),
    ({"dynamic_batching": {"max_batch_rows": 8, "preferred_batch_rows": [16]}}, "between 1 and max_batch_rows"),
    ({"dynamic_batching": {"max_batch_rows": 8, "delay": 1}}, "takes max_batch_rows"),
    ({"explainer": {"baseline": ["a"]}}, "list of numbers"),
    ({"explainer": {"method": "shap"}}, "takes output and baseline"),
    ({"model_class": "no_colon"}, "package.module:Class"),
])
def test_bad_keys_are_errors_naming_the_problem(raw, message):
    with pytest.raises(ModelConfigError, match=message):
        ModelConfig.from_dict(raw, where="m/config.yaml")


def test_a_config_file_overrides_the_server_defaults_key_by_key(tmp_path: Path):
    defaults = ModelConfig(dynamic_batching=BatchingConfig(16), explainer=ExplainerConfig())
    (tmp_path / "config.yaml").write_text("instances: 2\ndynamic_batching: null\n")
    config = ModelConfig.load(tmp_path, base=defaults)
    assert (config.instances, config.dynamic_batching, config.explainer) == (2, None, ExplainerConfig())
    assert ModelConfig.load(tmp_path / "absent", base=defaults) is defaults


def test_flags_fill_the_model_defaults():
    config = parse_args(["--model-class", "pkg.mod:Cls", "--batch-max-rows", "64", "--batch-max-delay-us", "250",
                         "--batch-preferred-rows", "32,16", "--predictor-host", "127.0.0.1:9000",
                         "--predictor-protocol", "grpc-v2", "--predictor-health-check"])
    assert config.model_name is None and config.model_path is None
    assert config.model_defaults.model_class == "pkg.mod:Cls"
    assert config.model_defaults.dynamic_batching == BatchingConfig(64, 250, (16, 32))
    assert (config.predictor_host, config.predictor_protocol, config.predictor_health_check) == (
        "127.0.0.1:9000", "grpc-v2", True)


def test_the_gil_switch_interval_flag():
    assert parse_args(["--model-class", "a:B"]).gil_switch_interval_us == 0  # Python's own 5 ms
    assert parse_args(["--model-class", "a:B", "--gil-switch-interval-us", "500"]).gil_switch_interval_us == 500


def test_the_explainer_flag_picks_the_occlusion_explainer():
    config = parse_args(["--explainer", "--predictor-host", "h:1", "--explainer-output", "p",
                         "--explainer-baseline", "0,1,2"])
    assert config.model_defaults.model_class == EXPLAINER_CLASS
    assert config.model_defaults.explainer == ExplainerConfig("p", (0.0, 1.0, 2.0))
    assert import_class(EXPLAINER_CLASS).__name__ == "OcclusionExplainer"


@pytest.mark.parametrize("argv, message", [
    (["--explainer"], "need --predictor-host"),
    (["--model-class", "a:B", "--predictor-health-check"], "need --predictor-host"),
    (["--model-class", "a:B", "--batch-max-delay-us", "5"], "need --batch-max-rows"),
    (["--model-path", "m.onnx"], "needs --model-name"),
    (["--model-class", "a:B", "--gil-switch-interval-us", "-1"], "0 (Python's default) or more"),
    ([], "--model-class"),
])
def test_role_flags_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_config_checks_without_flags():
    with pytest.raises(ValueError, match="--predictor-protocol"):
        ModelServerConfig(model_defaults=ModelConfig(model_class="a:B"), predictor_protocol="v3")
    with pytest.raises(ValueError, match="--predictor-timeout"):
        ModelServerConfig(model_defaults=ModelConfig(model_class="a:B"), predictor_timeout=0)


def test_import_class_from_a_file(tmp_path: Path):
    path = tmp_path / "user_model.py"
    path.write_text("from model_server.model import Model\n\nclass Mine(Model):\n    pass\n")
    assert import_class(f"{path}:Mine").__name__ == "Mine"
    with pytest.raises(ValueError, match="is not 'package.module:Class'"):
        import_class("Mine")
