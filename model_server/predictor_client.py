"""A transformer's (or explainer's) connection to its predictor: one pooled client per process.

    PredictorClient          forward(), infer(), predict_v1(), ready(), metadata(); start() / close()
    ├── RestPredictor        v1: KServe V1 JSON; v2: Open Inference Protocol REST with the binary tensor extension
    └── GrpcPredictor        grpc-v2: inference.GRPCInferenceService over one grpc.aio channel

The connection pool or channel is made once in ``start()`` (on the event loop) and closed in ``close()`` at
shutdown.
Each call has a timeout and carries on the request's ``x-request-id``, ``authorization`` and trace context headers:
W3C ``traceparent``, ``tracestate`` and ``baggage``, and B3 in both forms (``x-b3-*`` and the single ``b3``), as
Knative and KServe propagate them. Errors, translated here and nowhere else:

    the predictor answered with an error    PredictorError: the predictor's status (HTTP and gRPC, one mapped from
                                            the other) and its message, so the client sees what the predictor said
    no connection, or it broke              UpstreamError 502
    no answer within the timeout            UpstreamTimeout 504
    an answer we cannot read                UpstreamError 502
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import grpc

from common.errors import InferenceError, InvalidInput, ServelaneError, UpstreamError, UpstreamStatus, UpstreamTimeout
from common.upstream import UpstreamPool
from model_server import codec_grpc, codec_rest
from model_server.grpc_gen import inference_pb2 as pb
from model_server.grpc_gen import inference_pb2_grpc as pb_grpc
from model_server.types import InferRequest, InferResponse, ModelMetadata

PROTOCOLS = ("v1", "v2", "grpc-v2")
# lower-case: they are also gRPC metadata keys
TRACE_HEADERS = (
    "traceparent", "tracestate", "baggage",  # W3C trace context and baggage
    "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",  # B3, single and multi
)  # fmt: skip
FORWARDED_HEADERS = ("x-request-id", "authorization", *TRACE_HEADERS)
LIST_HEADERS = ("tracestate", "baggage")  # comma-separated lists: repeated fields are joined, not one kept (RFC 9110)
PROBE_TIMEOUT = 5.0  # seconds a readiness check of the predictor may take, at most
ROUTE_HEADER = "x-servelane-host"  # gRPC: the host a servelane gateway routes by (gateway.grpc_routes.HOST_HEADER)


class PredictorError(UpstreamStatus):
    """The predictor's own error, passed on with its status and message."""


def forwarded(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers a predictor call carries on (names lower-cased). A REST request's headers are a
    multi-dict: a list header sent as several fields arrives as one; of any other, the last field counts."""
    kept: dict[str, str] = {}
    for key, value in headers.items():
        name = key.lower()
        if name not in FORWARDED_HEADERS:
            continue
        kept[name] = f"{kept[name]}, {value}" if name in LIST_HEADERS and name in kept else value
    return kept


class PredictorClient:
    protocol = ""

    def __init__(self, host: str, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("the predictor timeout must be positive")
        self.host = host
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.protocol} {self.host} timeout={self.timeout}s>"

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def forward(self, model_name: str, payload: Any, headers: Mapping[str, str]) -> Any:
        """What a transformer's default ``predict`` does: a V2 request to ``infer``, a V1 body to ``predict_v1``."""
        if isinstance(payload, InferRequest):
            return await self.infer(payload, headers)
        if isinstance(payload, dict):
            return await self.predict_v1(model_name, payload, headers)
        raise InferenceError(
            f"cannot send a {type(payload).__name__} to the predictor: preprocess must return an InferRequest "
            "(v2, grpc-v2) or a V1 JSON object (v1)"
        )

    async def infer(self, request: InferRequest, headers: Mapping[str, str]) -> InferResponse:
        raise InferenceError(f"the predictor speaks {self.protocol}: preprocess must return a V1 JSON object")

    async def predict_v1(self, model_name: str, body: dict[str, Any], headers: Mapping[str, str]) -> Any:
        raise InferenceError(f"the predictor speaks {self.protocol}: preprocess must return an InferRequest")

    async def ready(self, model_name: str) -> bool:
        raise NotImplementedError

    async def metadata(self, model_name: str) -> ModelMetadata | None:
        """The predictor's model metadata (None over v1, which has none)."""
        return None


def build_predictor(
    host: str, protocol: str, timeout: float, *, authority: str | None = None, max_message_bytes: int = 8 << 20
) -> PredictorClient:
    """``authority``: the Host / ``:authority`` calls carry, when ``host`` is a gateway that routes by host."""
    if protocol == "grpc-v2":
        return GrpcPredictor(host, timeout, authority=authority, max_message_bytes=max_message_bytes)
    if protocol in ("v1", "v2"):
        return RestPredictor(host, timeout, protocol=protocol, authority=authority)
    raise ValueError(f"predictor protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


class RestPredictor(PredictorClient):
    """Over the proxy core's lean HTTP/1.1 client (:mod:`common.upstream`): keep-alive connections, one write per
    call. aiohttp's client cost a transformer about 150 µs of CPU per predictor call on loopback; this one about 60."""

    def __init__(
        self, host: str, timeout: float, *, protocol: str = "v2", authority: str | None = None, connections: int = 256
    ) -> None:
        super().__init__(host, timeout)
        self.protocol = protocol
        self._authority = authority or host
        self._connections = connections
        # at most this many calls at once (each holds a connection); the rest wait their turn, within their timeout
        self._slots = asyncio.Semaphore(connections)
        self._pool: UpstreamPool | None = None

    async def start(self) -> None:
        parts = urlsplit(f"http://{self.host}")
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"the predictor host must be HOST:PORT, got {self.host!r}")
        self._pool = UpstreamPool(parts.hostname, parts.port, self._connections)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    async def infer(self, request: InferRequest, headers: Mapping[str, str]) -> InferResponse:
        if self.protocol != "v2":
            return await super().infer(request, headers)
        body, content_headers = codec_rest.encode_request(request)
        version = f"/versions/{request.model_version}" if request.model_version else ""
        path = f"/v2/models/{request.model_name}{version}/infer"
        status, answer, ihcl = await self._call("POST", path, body, {**forwarded(headers), **content_headers})
        if status != 200:
            raise PredictorError.from_http(status, _message(status, answer))
        try:
            return codec_rest.decode_response(answer, ihcl)
        except InvalidInput as exc:
            raise UpstreamError(f"the predictor at {self.host} sent an unreadable response: {exc.message}") from None

    async def predict_v1(self, model_name: str, body: dict[str, Any], headers: Mapping[str, str]) -> Any:
        if self.protocol != "v1":
            return await super().predict_v1(model_name, body, headers)
        content = {"Content-Type": "application/json"}
        path = f"/v1/models/{model_name}:predict"
        status, answer, _ = await self._call("POST", path, codec_rest.dumps(body), {**forwarded(headers), **content})
        if status != 200:
            raise PredictorError.from_http(status, _message(status, answer))
        try:
            return codec_rest.loads(answer)
        except InvalidInput as exc:
            raise UpstreamError(f"the predictor at {self.host} sent an unreadable response: {exc.message}") from None

    async def _call(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str], timeout: float | None = None
    ) -> tuple[int, bytes, str | None]:
        """One exchange: (status, body, the binary extension's header-length field or None); the errors of the
        module docstring."""
        assert self._pool is not None, "predictor client used before start()"
        timeout = self.timeout if timeout is None else timeout
        # identity: with no Accept-Encoding a server may compress, and compressing on loopback only costs both sides
        fields = [("Host", self._authority), ("Accept-Encoding", "identity"), *headers.items()]
        try:
            async with asyncio.timeout(timeout), self._slots:
                answer = await self._pool.request(method, path, fields, body, None if body is None else len(body))
                try:
                    data = await answer.read()
                finally:
                    answer.release()  # kept alive if the exchange completed; closed if it was cut short
        except TimeoutError:
            raise UpstreamTimeout(f"the predictor at {self.host} did not answer within {timeout:g} s") from None
        except OSError as exc:  # refused, reset, or closed mid-answer (a malformed answer closes it too)
            raise UpstreamError(f"the predictor at {self.host} failed: {type(exc).__name__}: {exc}") from None
        return answer.status, data, answer.header(codec_rest.IHCL)

    async def ready(self, model_name: str) -> bool:
        path = f"/v1/models/{model_name}" if self.protocol == "v1" else f"/v2/models/{model_name}/ready"
        try:
            status, _, _ = await self._call("GET", path, None, {}, min(self.timeout, PROBE_TIMEOUT))
        except (UpstreamError, UpstreamTimeout):
            return False
        return status == 200

    async def metadata(self, model_name: str) -> ModelMetadata | None:
        if self.protocol == "v1":
            return None
        status, answer, _ = await self._call("GET", f"/v2/models/{model_name}", None, {})
        if status != 200:
            raise PredictorError.from_http(status, _message(status, answer))
        try:
            return ModelMetadata.from_dict(codec_rest.loads(answer))
        except (InvalidInput, KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"the predictor at {self.host} sent unreadable metadata: {exc}") from None


def _message(status: int, body: bytes) -> str:
    """The predictor's error message: ``{"error": ...}`` (also KServe's ``{"detail": ...}``), else its text."""
    try:
        doc = codec_rest.loads(body)
    except InvalidInput:
        doc = None
    if isinstance(doc, dict):
        for key in ("error", "detail"):
            if isinstance(doc.get(key), str):
                return doc[key]
    text = body[:1000].decode("utf-8", errors="replace").strip()
    return text or f"the predictor answered HTTP {status}"


class GrpcPredictor(PredictorClient):
    protocol = "grpc-v2"

    def __init__(
        self, host: str, timeout: float, *, authority: str | None = None, max_message_bytes: int = 8 << 20
    ) -> None:
        super().__init__(host, timeout)
        self._options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        # the authority is what an ingress routes by (KServe's, or a servelane gateway's gRPC front); the header
        # routes a servelane gateway started with --no-grpc-authority as well
        self._route: tuple[tuple[str, str], ...] = ((ROUTE_HEADER, authority),) if authority else ()
        if authority:
            self._options.append(("grpc.default_authority", authority))
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.GRPCInferenceServiceStub | None = None

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.host, options=self._options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def infer(self, request: InferRequest, headers: Mapping[str, str]) -> InferResponse:
        assert self._stub is not None, "predictor client used before start()"
        message = codec_grpc.encode_request(request)
        metadata = (*forwarded(headers).items(), *self._route)
        try:
            reply = await self._stub.ModelInfer(message, timeout=self.timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        try:
            return codec_grpc.decode_response(reply)
        except InvalidInput as exc:
            raise UpstreamError(f"the predictor at {self.host} sent an unreadable response: {exc.message}") from None

    def _error(self, exc: grpc.aio.AioRpcError) -> ServelaneError:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return UpstreamTimeout(f"the predictor at {self.host} did not answer within {self.timeout:g} s")
        return PredictorError.from_grpc(code, details or f"the predictor answered {code.name}")

    async def ready(self, model_name: str) -> bool:
        assert self._stub is not None, "predictor client used before start()"
        try:
            reply = await self._stub.ModelReady(
                pb.ModelReadyRequest(name=model_name), timeout=min(self.timeout, PROBE_TIMEOUT), metadata=self._route
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.ready)

    async def metadata(self, model_name: str) -> ModelMetadata | None:
        assert self._stub is not None, "predictor client used before start()"
        try:
            reply = await self._stub.ModelMetadata(
                pb.ModelMetadataRequest(name=model_name), timeout=self.timeout, metadata=self._route
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        return codec_grpc.decode_model_metadata(reply)
