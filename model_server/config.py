"""The model server's one configuration object, filled once in ``__main__`` from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from model_server.model_config import ModelConfig

MiB = 1024 * 1024
PREDICTOR_PROTOCOLS = ("v1", "v2", "grpc-v2")
EXPLAINER_CLASS = "model_server.explainer:OcclusionExplainer"
DEFAULT_MODEL_NAME = "model"  # KServe's, for a class served without --model-name


@dataclass(frozen=True, slots=True)
class ModelServerConfig:
    model_repository: Path | None = None
    model_name: str | None = None
    model_path: Path | None = None
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081  # 0 picks a free port; -1 disables gRPC
    max_request_bytes: int = 64 * MiB  # REST bodies, after decompression
    grpc_max_message_bytes: int = 8 * MiB  # KServe's default for both directions
    grace_period: float = 30.0  # seconds in-flight requests get to finish after SIGTERM
    keepalive_timeout: float = 65.0  # longer than common proxies' idle timeouts (KServe uses 65 s)
    compress_min_bytes: int = 1024  # responses smaller than this are sent uncompressed
    log_level: str = "INFO"
    # What config.yaml keys default to for every model (and all a single model has): --model-class, --batch-*,
    # --explainer-*.
    model_defaults: ModelConfig = ModelConfig()
    # The transformer / explainer role: where the predictor is, and how to call it.
    predictor_host: str | None = None  # host:port
    predictor_protocol: str = "v1"  # v1 | v2 (REST, binary tensor extension) | grpc-v2; KServe's default is v1
    predictor_timeout: float = 60.0  # seconds per predictor call
    # The Host (REST) or :authority (gRPC) predictor calls carry, for a predictor reached through a gateway that
    # routes by host (servelane up points a transformer at the gateway with "<isvc>-predictor.<ns>.<domain>").
    predictor_authority: str | None = None
    predictor_health_check: bool = False  # readiness also asks the predictor whether the model is ready
    explainer: bool = False  # serve the occlusion explainer (unless --model-class names another class)
    # How long a thread may hold the GIL while another waits for it (0: Python's 5 ms). A model call on the pool
    # needs the GIL to start and to return; while the event loop is busy encoding responses the model waits up to
    # this long, idle. Lower it when the model has cores (or a GPU) of its own.
    gil_switch_interval_us: int = 0

    def __post_init__(self) -> None:
        if self.explainer and self.model_defaults.model_class is None:
            object.__setattr__(self, "model_defaults", replace(self.model_defaults, model_class=EXPLAINER_CLASS))
        single = self.model_path is not None or self.model_defaults.model_class is not None
        if self.model_repository is None and not single:
            raise ValueError(
                "give --model-repository DIR, --model-name NAME with --model-path FILE, or --model-class pkg.mod:Cls"
            )
        if self.model_repository is not None and self.model_path is not None:
            raise ValueError("--model-repository and --model-path are mutually exclusive")
        if self.model_path is not None and self.model_name is None and self.model_defaults.model_class is None:
            raise ValueError("--model-path needs --model-name")
        if self.predictor_protocol not in PREDICTOR_PROTOCOLS:
            raise ValueError(f"--predictor-protocol must be one of {', '.join(PREDICTOR_PROTOCOLS)}")
        if self.predictor_timeout <= 0:
            raise ValueError("--predictor-timeout must be positive")
        if self.predictor_host is None and self.predictor_authority is not None:
            raise ValueError("--predictor-authority needs --predictor-host")
        if self.predictor_host is None and (self.predictor_health_check or self.explainer):
            raise ValueError("--predictor-health-check and --explainer need --predictor-host")
        if self.gil_switch_interval_us < 0:
            raise ValueError("--gil-switch-interval-us must be 0 (Python's default) or more")
        for name in ("max_request_bytes", "grpc_max_message_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
