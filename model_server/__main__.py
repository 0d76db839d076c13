"""``servelane model-server`` / ``python -m model_server``: parse the config, serve until SIGTERM, drain, exit 0.

Roles: a model repository (``--model-repository``), one ONNX file (``--model-name`` + ``--model-path``), one
Python class (``--model-class pkg.module:Cls``), a transformer (a class + ``--predictor-host``), or the occlusion
explainer (``--explainer`` + ``--predictor-host``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import fields
from pathlib import Path

from common import logs
from common.lifecycle import run_service, settled
from model_server.config import PREDICTOR_PROTOCOLS, ModelServerConfig
from model_server.model_config import BatchingConfig, ExplainerConfig, ModelConfig, ModelConfigError

DEFAULTS = {f.name: f.default for f in fields(ModelServerConfig)}
# Flags that fill ModelServerConfig.model_defaults (the config.yaml defaults) rather than a field of their own.
_MODEL_FLAGS = ("model_class", "batch_max_rows", "batch_max_delay_us", "batch_preferred_rows", "explainer_output",
                "explainer_baseline")


def parse_args(argv: list[str]) -> ModelServerConfig:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="servelane model-server", description=__doc__)
    p.add_argument("--model-repository", type=Path, default=env("SERVELANE_MODEL_REPOSITORY"),
                   help="folder in Triton's layout: <model>/<version>/model.onnx [+ <model>/config.yaml]")
    p.add_argument("--model-name", default=env("SERVELANE_MODEL_NAME"), help="serve one model under this name")
    p.add_argument("--model-path", type=Path, default=env("SERVELANE_MODEL_PATH"),
                   help="the .onnx file of --model-name, or its folder in Triton's layout (<version>/model.onnx "
                        "[+ config.yaml]); with --model-class: whatever the class loads")
    p.add_argument("--model-class", default=env("SERVELANE_MODEL_CLASS"),
                   help="serve this model_server.model.Model subclass: package.module:Class or file.py:Class "
                        "(the name defaults to 'model'; with --model-repository, the default model_class)")
    p.add_argument("--predictor-host", default=env("SERVELANE_PREDICTOR_HOST"),
                   help="host:port of the predictor a transformer or explainer calls")
    p.add_argument("--predictor-protocol", choices=PREDICTOR_PROTOCOLS,
                   default=env("SERVELANE_PREDICTOR_PROTOCOL", DEFAULTS["predictor_protocol"]))
    p.add_argument("--predictor-authority", default=env("SERVELANE_PREDICTOR_AUTHORITY"),
                   help="Host / :authority of predictor calls (for a predictor behind a gateway that routes by host)")
    p.add_argument("--predictor-timeout", type=float, default=DEFAULTS["predictor_timeout"],
                   help="seconds a predictor call may take (504 beyond)")
    p.add_argument("--predictor-health-check", action="store_true",
                   help="report ready only while the predictor reports the model ready")
    p.add_argument("--explainer", action="store_true",
                   help="serve the occlusion explainer for the predictor's model (:explain; :predict forwards)")
    p.add_argument("--explainer-output", help="the predictor output to explain (default: its first float output)")
    p.add_argument("--explainer-baseline", type=_numbers(float),
                   help="comma-separated value each feature is replaced with (default: zeros)")
    p.add_argument("--batch-max-rows", type=int,
                   help="turn on dynamic batching: rows per batch (config.yaml: dynamic_batching.max_batch_rows)")
    p.add_argument("--batch-max-delay-us", type=int, default=0,
                   help="how long the oldest queued request waits for a fuller batch (default 0: no wait)")
    p.add_argument("--batch-preferred-rows", type=_numbers(int), default=(),
                   help="comma-separated batch sizes sent at once when the queued rows make one")
    p.add_argument("--host", default=env("SERVELANE_HOST", "127.0.0.1"))
    p.add_argument("--http-port", type=int, default=int(env("SERVELANE_HTTP_PORT", "8080")))
    p.add_argument("--grpc-port", type=int, default=int(env("SERVELANE_GRPC_PORT", "8081")),
                   help="0 picks a free port, -1 turns gRPC off")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULTS["max_request_bytes"],
                   help="largest REST body accepted, after decompression (413 beyond)")
    p.add_argument("--grpc-max-message-bytes", type=int, default=DEFAULTS["grpc_max_message_bytes"],
                   help="largest gRPC message either way (RESOURCE_EXHAUSTED beyond)")
    p.add_argument("--grace-period", type=float, default=DEFAULTS["grace_period"],
                   help="seconds in-flight requests get to finish after SIGTERM")
    p.add_argument("--gil-switch-interval-us", type=int, default=int(env("SERVELANE_GIL_SWITCH_INTERVAL_US", "0")),
                   help="how long a thread may hold the GIL while a model call waits for it (0: Python's 5 ms); "
                        "lower it when the model has cores or a GPU of its own")
    p.add_argument("--log-level", default=env("SERVELANE_LOG_LEVEL", "INFO"))
    args = vars(p.parse_args(argv))
    try:
        defaults = _model_defaults(**{key: args.pop(key) for key in _MODEL_FLAGS})
        return ModelServerConfig(**args, model_defaults=defaults)
    except (ValueError, ModelConfigError) as exc:
        p.error(str(exc))
        raise  # unreachable: p.error exits


def _model_defaults(
    model_class: str | None, batch_max_rows: int | None, batch_max_delay_us: int,
    batch_preferred_rows: tuple[int, ...], explainer_output: str | None, explainer_baseline: tuple[float, ...] | None,
) -> ModelConfig:
    batching = None
    if batch_max_rows is not None:
        batching = BatchingConfig(batch_max_rows, batch_max_delay_us, tuple(sorted(batch_preferred_rows)))
    elif batch_max_delay_us or batch_preferred_rows:
        raise ValueError("--batch-max-delay-us and --batch-preferred-rows need --batch-max-rows")
    explainer = None
    if explainer_output is not None or explainer_baseline is not None:
        explainer = ExplainerConfig(explainer_output, explainer_baseline)
    return ModelConfig(model_class=model_class, dynamic_batching=batching, explainer=explainer)


def _numbers(kind: type) -> object:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None

    return parse


def main(argv: list[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure(config.log_level, "model-server")
    if config.gil_switch_interval_us:
        sys.setswitchinterval(config.gil_switch_interval_us / 1e6)

    async def serve(stop: asyncio.Event) -> None:
        from model_server.app import ModelServer  # imported here so --help stays fast

        server = ModelServer(config)
        await server.start()
        settled()
        await stop.wait()
        await server.stop()

    return run_service(serve)


if __name__ == "__main__":
    sys.exit(main())
