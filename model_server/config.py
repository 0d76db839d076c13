"""The model server's one configuration object, filled once in ``__main__`` from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024


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

    def __post_init__(self) -> None:
        if self.model_repository is None and (self.model_name is None or self.model_path is None):
            raise ValueError("give --model-repository DIR, or --model-name NAME with --model-path FILE")
        if self.model_repository is not None and self.model_path is not None:
            raise ValueError("--model-repository and --model-path are mutually exclusive")
        for name in ("max_request_bytes", "grpc_max_message_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
