"""The queue-proxy's one configuration object, filled once in ``__main__`` from flags and Knative's environment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueueProxyConfig:
    upstream: str = "127.0.0.1:8080"  # the model server's HTTP host:port (Knative: 127.0.0.1:$USER_PORT)
    upstream_grpc: str | None = None  # its gRPC host:port; None turns the gRPC port off
    host: str = "127.0.0.1"
    port: int = 8012
    grpc_port: int = 8013
    admin_port: int = 8022
    stats_port: int = 9090
    metrics_port: int = 9091
    container_concurrency: int = 0  # requests the upstream may run at once; 0: unlimited (no breaker)
    timeout: float = 300.0  # total, queue wait included (Knative's revision timeoutSeconds)
    response_start_timeout: float | None = None
    idle_timeout: float | None = None
    readiness_path: str | None = "/v2/health/ready"  # GET on the upstream; None: a TCP connect probe
    probe_period: float = 0.0  # 0: probe aggressively (every 50 ms for up to 10 s) when asked
    drain_quiet_period: float = 30.0  # after SIGTERM: seconds without a new request before shutting down
    revision: str = ""
    namespace: str = ""
    configuration: str = ""
    service: str = ""
    pod: str = ""
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.container_concurrency < 0:
            raise ValueError("container concurrency must be >= 0 (0 means unlimited)")
        for name in ("timeout", "response_start_timeout", "idle_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive")
        if self.drain_quiet_period < 0 or self.probe_period < 0:
            raise ValueError("drain quiet period and probe period must be >= 0")
        for name in ("upstream", "upstream_grpc"):
            value = getattr(self, name)
            if value is not None and (":" not in value or not value.rsplit(":", 1)[1].isdigit()):
                raise ValueError(f"{name} must be host:port, got {value!r}")

    @property
    def upstream_url(self) -> str:
        return f"http://{self.upstream}"
