"""The processes of ``servelane up``, started and stopped in order: controller (in this process) and its admin API,
the gateway (a child process), and the replicas (children of the scaler).

Start: admin API, then the gateway pointed at it (``--controller``, its Prometheus port from ``--metrics-port``),
then the caller applies specs.
Stop: the gateway gets SIGTERM first and finishes what it has, then every replica drains (queue-proxy first),
then the admin API closes. A gateway that dies on its own is restarted on the same ports.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from common.lifecycle import bound_port, free_port, start_http
from controller.admin import build_admin
from controller.controller import Controller, GatewayAddress
from controller.scaler import LocalScaler, die_with_parent, terminate

log = logging.getLogger(__name__)
GATEWAY_STOP_TIMEOUT = 30.0


class Stack:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        grpc_port: int,
        admin_port: int,
        domain: str,
        log_dir: Path | None,
        metrics_port: int,
        names: tuple[str, ...] = (),
    ) -> None:
        self.host, self.port, self.grpc_port, self.domain = host, port, grpc_port, domain
        self.names = names  # the gateway's --name values
        # the gateway's Prometheus port, chosen here when asked for any (0) as its admin port is: a gateway that is
        # restarted comes back on it, so the URL `up` prints stays the one to scrape
        self.metrics_port = metrics_port or free_port()
        self.admin_port = admin_port
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="servelane-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.gateway_address = GatewayAddress(f"{local}:{port}", f"{local}:{grpc_port}" if grpc_port >= 0 else None)
        self.scaler = LocalScaler(on_change=self._changed, log_dir=self.log_dir)
        self.controller = Controller(self.scaler, self.gateway_address, domain=domain)
        self.gateway_admin = free_port()
        self._runner: web.AppRunner | None = None
        self._gateway: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return (
            f"<Stack gateway={self.gateway_address} metrics={self.metrics_port} admin={self.admin_port} "
            f"{self.controller!r}>"
        )

    def _changed(self) -> None:
        self.controller.changed()

    async def start(self) -> None:
        self._runner = await start_http(build_admin(self.controller), "127.0.0.1", self.admin_port, shutdown_timeout=1)
        self.admin_port = bound_port(self._runner)
        await self._start_gateway()
        self._watch = asyncio.create_task(self._watch_gateway())

    def _gateway_argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gateway",
            "--host",
            self.host,
            "--admin-host",  # its /routing lists every replica's address: loopback only, as the controller's API
            "127.0.0.1",
            "--port",
            str(self.port),
            "--grpc-port",
            str(self.grpc_port),
            "--admin-port",
            str(self.gateway_admin),
            "--metrics-port",
            str(self.metrics_port),
            "--domain",
            self.domain,
            "--controller",
            f"http://127.0.0.1:{self.admin_port}",
            *(arg for name in self.names for arg in ("--name", name)),
        ]

    async def _start_gateway(self) -> None:
        with open(self.log_dir / "gateway.log", "ab") as out:
            self._gateway = await asyncio.create_subprocess_exec(
                *self._gateway_argv(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),
            )
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self._gateway.returncode is not None:
                    said = (self.log_dir / "gateway.log").read_text(errors="replace").strip().splitlines()[-1:]
                    raise RuntimeError(f"the gateway exited ({self._gateway.returncode}): {' '.join(said)}")
                try:
                    async with http.get(f"http://127.0.0.1:{self.gateway_admin}/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the gateway did not start in 30 s; see {self.log_dir}/gateway.log")

    async def _watch_gateway(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            if self._gateway is not None and self._gateway.returncode is not None and not self._stopping:
                log.error("the gateway exited (%s); restarting it", self._gateway.returncode)
                try:
                    await self._start_gateway()
                except RuntimeError as exc:
                    log.error("%s", exc)

    async def wait_ready(self, stop: asyncio.Event, progress: Callable[[str], None]) -> bool:
        """Report each revision's readiness as it changes, until every route is ready and the gateway has the
        latest routing state; False if ``stop`` was set first."""
        shown: dict[str, str] = {}
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                for line_key, line in _lines(self.controller.status()):
                    if shown.get(line_key) != line:
                        shown[line_key] = line
                        progress(line)
                if self.controller.ready() and await self._gateway_has(http, self.controller.state.version):
                    return True
                try:
                    await asyncio.wait_for(stop.wait(), 0.2)
                except TimeoutError:
                    pass
        return False

    async def _gateway_has(self, http: aiohttp.ClientSession, version: int) -> bool:
        try:
            async with http.get(f"http://127.0.0.1:{self.gateway_admin}/routing") as response:
                return response.status == 200 and (await response.json()).get("version", -1) >= version
        except aiohttp.ClientError:
            return False

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        if self._gateway is not None:
            await terminate(self._gateway, GATEWAY_STOP_TIMEOUT, "gateway")
        await self.controller.close()
        if self._runner is not None:
            await self._runner.cleanup()


def _lines(report: dict) -> list[tuple[str, str]]:
    out = []
    for service in report["services"]:
        for component, revisions in service["components"].items():
            for r in revisions:
                ready = sum(x["ready"] for x in r["replicas"])
                restarts = sum(x["restarts"] for x in r["replicas"])
                state = "ready" if ready >= r["desired"] > 0 else "starting"
                if restarts:  # a replica that keeps dying: say so, and where its output is
                    state += f", {restarts} restart{'s' if restarts > 1 else ''}: see its logs"
                line = f"{service['namespace']}/{service['name']} {component} {r['revision']}: "
                out.append((r["revision"], line + f"{ready}/{r['desired']} replicas ready ({state})"))
    return out
