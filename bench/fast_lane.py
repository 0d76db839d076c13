"""``python -m bench.fast_lane [--requests N] [--rounds R]``: the gateway's fast lane in process, without sockets.

One gateway (its real :class:`gateway.app.Gateway`, routing table, balancer, metrics and proxy core) takes the iris
predictor request of the stack suite from a fake client transport, and the predictor queue-proxy's answer is fed to
its upstream connection from a fake one: the whole per-request path of ``gateway-predictor`` in the stack suite,
Python only, with no system call and no wake-up. It prints the microseconds per request of the fastest round.

What it is for: a change to the fast lane shows here within a few percent, where the stack suite's CPU per request
at c1 moves by 20 % from run to run on a shared 2-core VM. Its number is the lane's cost with warm caches; at c1 on
that VM the same code costs two to three times as much (each request finds the caches cold), so read it as a
ratio between two versions of the code, run one after the other, not as a CPU figure.
"""

from __future__ import annotations

import argparse
import sys
import time

import uvloop

from common import httpserver, upstream
from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.state import RoutingState

PREDICTOR = "sklearn-iris-predictor-00001"
HOST = b"sklearn-iris-predictor.default.example.com"
BODY = b'{"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}'
REQUEST = (
    b"POST /v1/models/sklearn-iris:predict HTTP/1.1\r\nHost: %b\r\nUser-Agent: wrk\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (HOST, len(BODY), BODY)
)
# what the predictor's queue-proxy answers in the stack suite, field for field
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Sat, 05 Dec 2026 20:33:10 GMT\r\n"
    b"Server: servelane\r\nServer-Timing: preprocess;dur=0.003, predict;dur=0.211, postprocess;dur=0.002, "
    b"queue-proxy;dur=0.671\r\nX-Request-Id: 3b47fe15-1b96-486b-9dbb-18951f877249\r\nContent-Length: 21\r\n\r\n"
    b'{"predictions":[1,1]}'
)
STATE = {
    "version": 1, "domain": "example.com",
    "services": [{
        "name": "sklearn-iris", "namespace": "default", "models": ["sklearn-iris"], "entry": "predictor",
        "components": {"predictor": [{"revision": PREDICTOR, "percent": 100, "tag": "latest"}]},
    }],
    "revisions": {PREDICTOR: {
        "namespace": "default", "service": "sklearn-iris", "component": "predictor", "timeout": 300.0,
        "endpoints": [{"http": "127.0.0.1:9", "grpc": None, "ready": True}],
    }},
}  # fmt: skip


class _Transport:
    """What the protocols write, kept; the rest of a transport's interface, inert."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        raise RuntimeError("the lane closed a connection: the exchange went wrong")


def measure(requests: int, rounds: int) -> list[float]:
    """Microseconds per request of each round."""
    loop = uvloop.new_event_loop()
    gateway = Gateway(GatewayConfig(routes="unused"))  # type: ignore[arg-type]
    gateway.client._loop = loop
    gateway.apply(RoutingState.from_dict(STATE))
    server = gateway.servers["http"]
    server.loop = loop
    client, replica = _Transport(), _Transport()
    inbound = httpserver._Connection(server)
    inbound.connection_made(client)  # type: ignore[arg-type]
    pool = gateway.client._pool("http://127.0.0.1:9")
    outbound = upstream._Connection(pool, loop)
    outbound.connection_made(replica)  # type: ignore[arg-type]
    pool.put(outbound)  # kept alive: every request reuses it, as at c1

    def one() -> None:
        inbound.data_received(REQUEST)  # routed, relayed: the request is written to the replica
        outbound.data_received(ANSWER)  # the answer comes back and is written to the client

    one()
    answered = client.written[-1] if client.written else b""
    if not (replica.written and answered.startswith(b"HTTP/1.1 200 OK") and b"gateway;dur=" in answered):
        raise RuntimeError(f"the lane did not relay the request: {client.written[-1:]!r}")
    results = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(requests):
            one()
        results.append((time.perf_counter() - started) / requests * 1e6)
        client.written.clear()
        replica.written.clear()
    loop.close()
    return results


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fast_lane", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20000, help="requests per round (default 20000)")
    p.add_argument("--rounds", type=int, default=7, help="rounds; the fastest is reported (default 7)")
    args = p.parse_args(argv)
    results = measure(args.requests, args.rounds)
    print(f"gateway fast lane, in process: {min(results):.2f} us/request, fastest of {args.rounds} rounds "
          f"({', '.join(f'{r:.1f}' for r in results)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
