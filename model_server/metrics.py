"""Prometheus metrics of the model server, on their own registry (one per app, so tests get a fresh one).

Histogram names follow KServe (``request_{preprocess,predict,postprocess,explain}_seconds`` by ``model_name``);
the rest are ``model_server_*``. Labels stay bounded: model names come from the repository, never from the
request path, and status is the numeric code.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from common.metrics import LoopHistogram

# Latency buckets from 100 µs (a small model on CPU) to 10 s (a large model, or a cold GPU).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# A batcher queue wait is 0 to a few ms with no delay configured, up to the delay (usually under 10 ms) otherwise.
QUEUE_BUCKETS = (0.00001, 0.00005, *LATENCY_BUCKETS)
UNKNOWN_MODEL = "_unknown"


class ModelServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        stage = dict(labelnames=("model_name",), buckets=LATENCY_BUCKETS, registry=self.registry)
        # Observed on the event loop only, several times per request: the lock-free LoopHistogram.
        self.preprocess = LoopHistogram("request_preprocess_seconds", "Time spent in preprocess", **stage)
        self.predict = LoopHistogram("request_predict_seconds", "Time spent in predict", **stage)
        self.postprocess = LoopHistogram("request_postprocess_seconds", "Time spent in postprocess", **stage)
        self.explain = LoopHistogram("request_explain_seconds", "Time spent in explain", **stage)
        self.requests = Counter(
            "model_server_requests",
            "Inference requests by model, protocol and status code",
            ("model_name", "protocol", "code"),
            registry=self.registry,
        )
        self.batch_size = LoopHistogram(
            "model_server_inference_batch_size",
            "Rows (first dimension) per inference request",
            ("model_name",),
            BATCH_BUCKETS,
            self.registry,
        )
        # The dynamic batcher (models with dynamic_batching), observed on the event loop once per batch.
        self.batch_rows = LoopHistogram(
            "model_server_batch_rows", "Rows per batch the dynamic batcher ran", ("model_name",), BATCH_BUCKETS,
            self.registry,
        )
        self.batch_requests = LoopHistogram(
            "model_server_batch_requests", "Requests per batch the dynamic batcher ran", ("model_name",),
            BATCH_BUCKETS, self.registry,
        )
        self.batch_queue_wait = LoopHistogram(
            "model_server_batch_queue_wait_seconds", "Time a request waited in the dynamic batcher's queue",
            ("model_name",), QUEUE_BUCKETS, self.registry,
        )
        self.providers = Gauge(
            "model_server_execution_provider_info",
            "1 for each onnxruntime execution provider a loaded model version runs on",
            ("model_name", "version", "provider"),
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "model_server_model_ready", "1 while the model is ready to serve", ("model_name",), registry=self.registry
        )
