"""``servelane model-server`` as a real process on free ports, for the tests that chain several of them."""

from __future__ import annotations

from tests.harness import ServiceProcess, free_port


class Served:
    def __init__(self, *args: str) -> None:
        self.http, self.grpc = free_port(), free_port()
        self.proc = ServiceProcess("servelane", "model-server", "--http-port", str(self.http),
                                   "--grpc-port", str(self.grpc), "--log-level", "WARNING", *args).start()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.http}{path}"

    def wait(self) -> Served:
        self.proc.wait_http(self.url("/v2/health/ready"))
        return self
