"""The queue-proxy suite: one fast upstream direct, through the queue-proxy, and through nginx, in one run.

Cases (``<path>@c<concurrency>``, at 1, 16 and 64): ``direct`` to the upstream; ``queue-proxy``
(``python -m queue_proxy``, container concurrency 0: no breaker); ``queue-proxy-cc64`` (container concurrency 64,
so every request passes the breaker); ``nginx``, a reverse proxy with keep-alive upstream connections, as the
reference; ``py-relay`` (:mod:`bench.py_relay`), the least a Python proxy on uvloop can do per request (httptools
frames each message, the bytes pass unchanged), so the rows show how much of the queue-proxy's cost is Python itself
and how much is the work it does. Every case POSTs the same small JSON body; each checks one answer with a probe
before its first load.

The upstream is nginx answering ``return 200 "ok"`` (one worker), fast enough that the proxies in front of it are
what is measured; nginx is installed with apt-get when missing and possible. Without nginx the upstream is
:mod:`bench.ok_upstream` (Python, so itself a bottleneck) and the nginx rows are skipped; the output says so.
Each nginx runs in the foreground from its own config in a temporary folder and is stopped at the end.

Server CPU per request is the proxy's (the queue-proxy's pid, or the proxy nginx's worker), the upstream's
separately; for ``direct`` it is the upstream's. The ratios are issue 3's targets: added p50 at concurrency 1,
proxy CPU per request (Knative publishes about 400 us, 1 vCPU per 2,500 rps), the queue-proxy against nginx, and
the queue-proxy's idle RSS, read from /proc once it is up and before any load.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import aiohttp

from bench.harness import Case, Measurement, Options, Ratio, SuiteResult, probed, run_suite
from bench.loadgen import HttpRequest, find_or_install, http_driver
from tests.harness import ServiceProcess, free_port

HOST = "127.0.0.1"
BODY = b'{"instances": [[6.8, 2.8, 4.8, 1.4]]}'  # what a small inference request weighs
REPLY = b"ok"
CONCURRENCIES = (1, 16, 64)
PATHS = ("direct", "queue-proxy", "queue-proxy-cc64", "nginx", "py-relay")
KEYS = [f"{path}@c{c}" for c in CONCURRENCIES for path in PATHS]  # side by side: every path at one concurrency
KNATIVE_CPU_US = 400.0  # Knative's queue-proxy: about 1 vCPU per 2,500 rps


# -- nginx -----------------------------------------------------------------------------------------------------

CONFIG = """\
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    keepalive_requests 1000000;  # the default (1,000) would make the load generator reconnect during a phase
{server}
}}
"""

UPSTREAM_SERVER = """\
    server {{
        listen {host}:{port};
        location / {{ return 200 "ok"; }}
    }}
"""

PROXY_SERVER = """\
    upstream fast {{
        server {host}:{upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://fast;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


class Nginx:
    """One nginx, a master and one worker, in the foreground with its config and pid file in ``work``."""

    def __init__(self, binary: str, work: Path, server: str) -> None:
        self.binary, self.work, self.server = binary, work, server
        self.process: ServiceProcess | None = None

    def __repr__(self) -> str:
        return f"<Nginx {self.work} {self.process!r}>"

    def start(self) -> Nginx:
        self.work.mkdir(parents=True, exist_ok=True)
        conf = self.work / "nginx.conf"
        conf.write_text(CONFIG.format(work=self.work, server=self.server))
        argv = [self.binary, "-p", str(self.work), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]
        self.process = ServiceProcess.command(argv).start()
        return self

    def wait_ready(self, url: str, timeout: float = 15.0) -> None:
        assert self.process is not None
        self.process.wait_http(url, timeout)

    @property
    def worker_pid(self) -> int:
        """The one worker: the process whose parent is the master (the master itself idles during the load)."""
        assert self.process is not None
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                text = stat.read_text()
                if int(text[text.rindex(")") + 2:].split()[1]) == self.process.pid:
                    return int(stat.parent.name)
        raise RuntimeError(f"{self!r} has no worker:\n{self.process.output()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (nginx's fast shutdown), then wait; SIGKILL only if it does not exit in time."""
        if self.process is not None:
            self.process.stop(timeout)


def find_nginx() -> str | None:
    return find_or_install("nginx", ("nginx-light", "nginx"), install=True)


# -- what the suite starts -------------------------------------------------------------------------------------

@dataclass
class Stack:
    upstream_port: int
    upstream_pid: int  # the nginx worker, or the Python fallback
    ports: dict[str, int] = field(default_factory=dict)  # path -> the port it listens on
    pids: dict[str, int] = field(default_factory=dict)  # path -> the pid whose CPU is the proxy's
    idle_rss_mb: dict[str, float] = field(default_factory=dict)  # queue-proxy path -> VmRSS once up, before load
    notes: list[str] = field(default_factory=list)


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


@contextlib.contextmanager
def serving(work: Path, nginx: str | None) -> Iterator[Stack]:
    """The upstream, both queue-proxies and (with nginx) the reference proxy, up and answering; stopped after."""
    with contextlib.ExitStack() as stack:
        port = free_port()
        if nginx is not None:
            upstream = Nginx(nginx, work / "upstream", UPSTREAM_SERVER.format(host=HOST, port=port)).start()
            stack.callback(upstream.stop)
            upstream.wait_ready(f"http://{HOST}:{port}/")
            out = Stack(port, upstream.worker_pid)
            out.notes.append(f"upstream: nginx (one worker, return 200 \"ok\") at {HOST}:{port}")
        else:
            fallback = ServiceProcess("bench.ok_upstream", str(port)).start()
            stack.callback(fallback.stop)
            fallback.wait_http(f"http://{HOST}:{port}/")
            out = Stack(port, fallback.pid)
            out.notes += ["nginx could not be had (not installed, apt-get failed or not root): nginx rows skipped",
                          "upstream: the Python fallback (bench.ok_upstream), far slower than nginx: the direct rows "
                          "and the ratios against them measure it, not a fast upstream"]
        out.ports["direct"], out.pids["direct"] = port, out.upstream_pid
        for path, concurrency in (("queue-proxy", 0), ("queue-proxy-cc64", 64)):
            proxy, out.ports[path] = start_queue_proxy(port, concurrency)
            stack.callback(proxy.stop)
            out.pids[path] = proxy.pid
        relay_port = free_port()
        relay = ServiceProcess("bench.py_relay", str(relay_port), str(port)).start()
        stack.callback(relay.stop)
        relay.wait_http(f"http://{HOST}:{relay_port}/")
        out.ports["py-relay"], out.pids["py-relay"] = relay_port, relay.pid
        if nginx is not None:
            proxy_port = free_port()
            proxy = Nginx(nginx, work / "proxy", PROXY_SERVER.format(host=HOST, upstream=port, port=proxy_port))
            stack.callback(proxy.start().stop)
            proxy.wait_ready(f"http://{HOST}:{proxy_port}/")
            out.ports["nginx"], out.pids["nginx"] = proxy_port, proxy.worker_pid
        time.sleep(0.5)  # let start-up garbage settle before reading the idle RSS
        out.idle_rss_mb = {path: rss_mb(out.pids[path]) for path in ("queue-proxy", "queue-proxy-cc64")}
        yield out


def start_queue_proxy(upstream_port: int, container_concurrency: int) -> tuple[ServiceProcess, int]:
    """A queue-proxy in front of the upstream, on free ports, without gRPC (no --upstream-grpc), ready."""
    port, stats = free_port(), free_port()
    proxy = ServiceProcess(
        "queue_proxy", "--upstream", f"{HOST}:{upstream_port}", "--port", str(port), "--stats-port", str(stats),
        "--admin-port", str(free_port()), "--metrics-port", str(free_port()), "--grpc-port", str(free_port()),
        "--container-concurrency", str(container_concurrency), "--drain-quiet-period", "0", "--log-level", "WARNING",
    ).start()
    try:
        proxy.wait_http(f"http://{HOST}:{stats}/metrics", timeout=30)
    except BaseException:
        proxy.stop()
        raise
    return proxy, port


# -- cases and ratios ------------------------------------------------------------------------------------------

def request(port: int) -> HttpRequest:
    return HttpRequest(f"http://{HOST}:{port}/v1/models/fast:predict", BODY, (("Content-Type", "application/json"),))


async def probe(req: HttpRequest) -> None:
    headers = {**dict(req.headers), "Accept-Encoding": "identity"}
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(req.url, data=req.body, headers=headers) as response:
            body = await response.read()
    if response.status != 200 or body != REPLY:
        raise RuntimeError(f"probe {req.url}: HTTP {response.status} {body[:300]!r}, expected 200 {REPLY!r}")


def build_cases(stack: Stack, options: Options, wrk: str | None) -> list[Case]:
    cases = []
    for concurrency in CONCURRENCIES:
        for path in PATHS:
            if path not in stack.ports or not options.selects(f"{path}@c{concurrency}"):
                continue
            req = request(stack.ports[path])
            upstream = None if path == "direct" else stack.upstream_pid
            cases.append(Case(path, concurrency, probed(http_driver(req, wrk), partial(probe, req)),
                              stack.pids[path], upstream))
    return cases


Term = tuple[str, str]  # (case key, Measurement field)
QP1, QP16, QP64, CC64 = "queue-proxy@c1", "queue-proxy@c16", "queue-proxy@c64", "queue-proxy-cc64@c64"
# (name, how: "-" difference, "/" quotient, "=" the value itself, a, b or None, target)
RATIOS: tuple[tuple[str, str, Term | float, Term | None, str], ...] = (
    ("queue-proxy c1: added p50 over direct, ms", "-", (QP1, "p50_ms"), ("direct@c1", "p50_ms"), "<= 0.15"),
    ("queue-proxy-cc64 c1: added p50 over direct, ms", "-", ("queue-proxy-cc64@c1", "p50_ms"),
     ("direct@c1", "p50_ms"), "<= 0.15"),
    ("nginx c1: added p50 over direct, ms", "-", ("nginx@c1", "p50_ms"), ("direct@c1", "p50_ms"), ""),
    ("py-relay c1: added p50 over direct, ms", "-", ("py-relay@c1", "p50_ms"), ("direct@c1", "p50_ms"), ""),
    ("queue-proxy c1: p50 / nginx p50", "/", (QP1, "p50_ms"), ("nginx@c1", "p50_ms"), ""),
    ("queue-proxy c1: proxy CPU us/req", "=", (QP1, "server_cpu_us"), None, ""),
    ("py-relay c1: proxy CPU us/req", "=", ("py-relay@c1", "server_cpu_us"), None, ""),
    ("queue-proxy c16: proxy CPU us/req", "=", (QP16, "server_cpu_us"), None, "<= 100"),
    ("queue-proxy c64: proxy CPU us/req", "=", (QP64, "server_cpu_us"), None, "<= 100"),
    ("queue-proxy-cc64 c64: proxy CPU us/req", "=", (CC64, "server_cpu_us"), None, "<= 100"),
    ("Knative (400 us) / queue-proxy CPU/req, c16", "/", KNATIVE_CPU_US, (QP16, "server_cpu_us"), ""),
    ("queue-proxy / nginx CPU per request, c16", "/", (QP16, "server_cpu_us"), ("nginx@c16", "server_cpu_us"), ""),
    ("queue-proxy / nginx CPU per request, c64", "/", (QP64, "server_cpu_us"), ("nginx@c64", "server_cpu_us"), ""),
    ("queue-proxy / nginx rps, c64", "/", (QP64, "rps"), ("nginx@c64", "rps"), ""),
    ("queue-proxy / direct rps, c64", "/", (QP64, "rps"), ("direct@c64", "rps"), ""),
    ("queue-proxy-cc64 / queue-proxy rps, c64", "/", (CC64, "rps"), (QP64, "rps"), ""),
)


def ratios(run: dict[str, Measurement], idle_rss_mb: dict[str, float]) -> list[Ratio]:
    """The :data:`RATIOS` whose cases ran, from one repeat (a case with errors makes its ratios n/a); then RSS."""
    out = []
    for name, how, a, b, target in RATIOS:
        if any(isinstance(t, tuple) and t[0] not in run for t in (a, b)):
            continue
        x, y = _term(run, a), _term(run, b) if b is not None else None
        value: float | None = x
        if how == "-":
            value = None if x is None or y is None else x - y
        elif how == "/":
            value = None if x is None or not y else x / y
        out.append(Ratio(name, value, target))
    out.append(Ratio("queue-proxy idle RSS, MB", idle_rss_mb.get("queue-proxy"), "<= 40"))
    out.append(Ratio("queue-proxy-cc64 idle RSS, MB", idle_rss_mb.get("queue-proxy-cc64"), "<= 40"))
    return out


def _term(run: dict[str, Measurement], term: Term | float) -> float | None:
    if not isinstance(term, tuple):
        return term
    m = run[term[0]]
    return None if m.errors else getattr(m, term[1])


async def run(options: Options, wrk: str | None) -> SuiteResult:
    nginx = await asyncio.to_thread(find_nginx)
    with tempfile.TemporaryDirectory(prefix="bench-queue-proxy-") as tmp, serving(Path(tmp), nginx) as stack:
        rss: Callable[[dict[str, Measurement]], list[Ratio]] = partial(ratios, idle_rss_mb=stack.idle_rss_mb)
        result = await run_suite("queue_proxy", build_cases(stack, options, wrk), options, rss)
        for path in ("queue-proxy", "queue-proxy-cc64"):
            pid = stack.pids[path]
            result.ratios.append(Ratio(f"{path} RSS after the load (peak), MB", rss_mb(pid, "VmHWM")))
        result.notes += stack.notes
        if wrk is None:
            result.notes.append("load: the Python generator (no wrk); it shares the CPU and bounds rps")
        return result
