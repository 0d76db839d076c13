"""``servelane model-server`` / ``python -m model_server``: parse the config, serve until SIGTERM, drain, exit 0."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import fields
from pathlib import Path

from common import logs
from common.lifecycle import run_service
from model_server.config import ModelServerConfig

DEFAULTS = {f.name: f.default for f in fields(ModelServerConfig)}


def parse_args(argv: list[str]) -> ModelServerConfig:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="servelane model-server", description=__doc__)
    p.add_argument("--model-repository", type=Path, default=env("SERVELANE_MODEL_REPOSITORY"),
                   help="folder in Triton's layout: <model>/<version>/model.onnx [+ <model>/config.yaml]")
    p.add_argument("--model-name", default=env("SERVELANE_MODEL_NAME"), help="serve one model under this name")
    p.add_argument("--model-path", type=Path, default=env("SERVELANE_MODEL_PATH"),
                   help="the .onnx file of --model-name")
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
    p.add_argument("--log-level", default=env("SERVELANE_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    try:
        return ModelServerConfig(**vars(args))
    except ValueError as exc:
        p.error(str(exc))
        raise  # unreachable: p.error exits


def main(argv: list[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure(config.log_level, "model-server")

    async def serve(stop: asyncio.Event) -> None:
        from model_server.app import ModelServer  # imported here so --help stays fast

        server = ModelServer(config)
        await server.start()
        await stop.wait()
        await server.stop()

    return run_service(serve)


if __name__ == "__main__":
    sys.exit(main())
