"""Composes the model server: repository → dataplane → REST app and gRPC server, started and stopped in order.

Start: open the predictor client (transformer and explainer roles), bind HTTP and gRPC (so liveness answers at
once), then load the models in the background; the server reports ready once every model is (and, with
``--predictor-health-check``, once the predictor says the model is). Stop (SIGTERM): both listeners stop
accepting at once, in-flight requests get ``grace_period`` seconds to finish, then the predictor client is closed
and the models are released.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from model_server.config import DEFAULT_MODEL_NAME, ModelServerConfig
from model_server.custom import ModelFactory
from model_server.dataplane import DataPlane
from model_server.grpc_server import add_port, build_grpc_server
from model_server.metrics import ModelServerMetrics
from model_server.predictor_client import PredictorClient, build_predictor
from model_server.repository import ModelRepository
from model_server.rest import RestEdge

log = logging.getLogger(__name__)


class ModelServer:
    def __init__(self, config: ModelServerConfig, repository: ModelRepository | None = None) -> None:
        self.config = config
        self.predictor = _predictor(config)
        self.repository = repository or _repository(config, self.predictor)
        self.metrics = ModelServerMetrics()
        upstream = self.predictor.ready if self.predictor is not None and config.predictor_health_check else None
        self.dataplane = DataPlane(self.repository, self.metrics, upstream_ready=upstream)
        self.http = RestEdge(self.dataplane, config).server()
        self.http_port = 0
        self.grpc_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._loading: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ModelServer http={self.http_port} grpc={self.grpc_port} {self.repository!r}>"

    async def start(self) -> None:
        c = self.config
        if self.predictor is not None:
            await self.predictor.start()
        self.http_port = await self.http.start(c.host, c.http_port)
        if c.grpc_port >= 0:
            self._grpc = build_grpc_server(self.dataplane, c)
            self.grpc_port = add_port(self._grpc, c.host, c.grpc_port)
            await self._grpc.start()
        log.info("listening: http %s:%d, grpc %s", c.host, self.http_port, self.grpc_port or "off")
        self._loading = asyncio.create_task(self._load_models())

    async def _load_models(self) -> None:
        await self.repository.load_all()
        self.dataplane.refresh_model_metrics()
        states = {e.name: e.state for e in self.repository.entries()}
        log.info("models: %s; server %s", states, "ready" if self.repository.all_ready() else "NOT ready")

    async def wait_loaded(self) -> None:
        if self._loading is not None:
            await asyncio.shield(self._loading)

    async def stop(self) -> None:
        grace = self.config.grace_period
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        stopping = []
        if self._grpc is not None:
            stopping.append(self._grpc.stop(grace))
        if self.http_port:
            stopping.append(self.http.stop(grace))
        await asyncio.gather(*stopping)
        if self.predictor is not None:
            await self.predictor.close()
        await self.repository.close()
        log.info("stopped")


def _predictor(config: ModelServerConfig) -> PredictorClient | None:
    if config.predictor_host is None:
        return None
    return build_predictor(
        config.predictor_host,
        config.predictor_protocol,
        config.predictor_timeout,
        authority=config.predictor_authority,
        max_message_bytes=config.grpc_max_message_bytes,
    )


def _repository(config: ModelServerConfig, predictor: PredictorClient | None) -> ModelRepository:
    repository = ModelRepository(
        config.model_repository, factory=ModelFactory(predictor), defaults=config.model_defaults
    )
    if config.model_repository is None:
        repository.add_file(config.model_name or DEFAULT_MODEL_NAME, config.model_path)
    return repository
