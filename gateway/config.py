"""The gateway's one configuration object, filled once in ``__main__`` from flags and ``SERVELANE_*`` variables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "servelane-gateway"  # what ServerMetadata and GET /v2 on the gateway's own names answer
SERVER_VERSION = "0.1.0"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    routes: Path | None = None  # a routing-state file (YAML or JSON), re-read when it changes or on SIGHUP
    controller: str | None = None  # or the controller's base URL, long-polled at /v1/routing
    host: str = "127.0.0.1"
    admin_host: str | None = None  # where the admin port listens (its /routing lists every replica); None: host
    port: int = 8080  # HTTP; 0 picks a free port (every port here)
    grpc_port: int = 8081  # -1: no gRPC port
    grpc_authority: bool = True  # route gRPC by :authority too (gateway.grpc_front); off saves a relay per call
    admin_port: int = 8082  # /healthz, /readyz, /routing
    metrics_port: int = 9092  # Prometheus
    domain: str | None = None  # overrides the routing state's domain when set
    # more host names that mean this gateway (route by path), besides localhost & co.; "name:port" means the gateway
    # only with that port, the one a container runtime publishes it on (Host: localhost:9000 for -p 9000:8080)
    names: tuple[str, ...] = ()
    poll_interval: float = 1.0  # seconds between checks of the routes file
    controller_wait: float = 30.0  # seconds the controller may hold a long poll before answering 304
    max_backoff: float = 5.0  # seconds, the longest wait between attempts while the controller is away
    grace_period: float = 30.0  # on SIGTERM: seconds in-flight requests get to finish
    max_message_bytes: int = 64 * 1024 * 1024  # gRPC, each way
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if (self.routes is None) == (self.controller is None):
            raise ValueError("give exactly one of --routes FILE and --controller URL")
        if self.controller is not None and not self.controller.startswith(("http://", "https://")):
            raise ValueError(f"--controller must be an http:// or https:// URL, got {self.controller!r}")
        for name in ("port", "grpc_port", "admin_port", "metrics_port"):
            if not (0 <= getattr(self, name) <= 65535 or (name == "grpc_port" and self.grpc_port == -1)):
                raise ValueError(f"{name} must be a port number (0: any free port)")
        for given in self.names:
            check_name(given)
        for name in ("poll_interval", "controller_wait", "max_backoff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.grace_period < 0 or self.max_message_bytes <= 0:
            raise ValueError("grace period must be >= 0 and the message limit > 0")


def check_name(given: str) -> None:
    """Refuses a ``--name`` that is neither a host name nor ``host:port`` with a real port (ValueError)."""
    name, colon, port = given.rpartition(":") if given.count(":") == 1 else ("", "", "")
    if colon and (not name or not port.isdigit() or not 0 < int(port) <= 65535):
        raise ValueError(f"--name {given!r}: give a host name, or host:port with a port number")
