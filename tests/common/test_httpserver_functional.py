"""common.httpserver over real loopback sockets, byte for byte: keep-alive and pipelining, bodies whole and
streamed (chunked, 100-continue), streamed responses, the errors it answers itself, cancellation, and stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from common.httpserver import HttpServer, Request, Response, get_routes


class App:
    """Handlers chosen by path; records what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes | None, bool]] = []
        self.gate = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, request: Request) -> Response:
        path = request.path
        if path == "/early":  # answers before reading the body, as a model server does with an oversized one
            return Response.error(413, "too large")
        body = request.body
        if request.stream is not None:
            body = await request.stream.read()
        self.seen.append((request.method, request.target, body, request.stream is not None))
        if path == "/boom":
            raise RuntimeError("secret detail")
        if path == "/hold":
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if path == "/stream":
            request.start_response(200, [("Content-Type", "text/plain")])
            for piece in (b"one ", b"two ", b"three"):
                await request.write(piece)
            await request.end_response()
            return Response.streamed(200)
        return Response.text(f"{request.method} {request.target} {len(body or b'')} {request.headers.get('X-A')}")


@pytest.fixture
async def served() -> AsyncIterator[tuple[App, HttpServer, int]]:
    app = App()
    server = HttpServer(app, buffer_limit=1024)
    port = await server.start("127.0.0.1", 0)
    yield app, server, port
    app.gate.set()
    await server.stop(1.0)


async def exchange(port: int, data: bytes, *, until_close: bool = True, read: int = 1) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if until_close:
            return await asyncio.wait_for(reader.read(-1), 5)
        out = b""
        while out.count(b"HTTP/1.1 ") < read or not _complete(out, read):
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                break
            out += chunk
        return out
    finally:
        writer.close()


def _complete(data: bytes, responses: int) -> bool:
    """Enough bytes for ``responses`` Content-Length-framed responses."""
    rest = data
    for _ in range(responses):
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            return False
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        if len(rest) < length:
            return False
        rest = rest[length:]
    return True


async def test_keep_alive_and_pipelined_requests_answer_in_order(served):
    app, _, port = served
    two = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
    out = await exchange(port, two, until_close=False, read=2)
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert out.index(b"GET /a?x=1 0 1") < out.index(b"POST /b 3 None")
    assert b"Connection: close" not in out
    assert [s[:3] for s in app.seen] == [("GET", "/a?x=1", None), ("POST", "/b", b"abc")]


async def test_connection_close_and_http10_close_after_the_answer(served):
    _, _, port = served
    out = await exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in out
    out = await exchange(port, b"GET / HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in out


async def test_large_and_chunked_bodies_stream_to_the_handler(served):
    app, _, port = served
    big = b"x" * 5000  # over the fixture's 1024-byte buffer limit
    out = await exchange(
        port, b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n" + big
    )
    assert b"POST /big 5000" in out
    chunked = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    chunked += b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    out = await exchange(port, chunked)
    assert b"POST /c 5" in out
    assert [(s[1], s[2], s[3]) for s in app.seen] == [("/big", big, True), ("/c", b"abcde", True)]


async def test_expect_100_continue_is_answered_before_the_body(served):
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"body")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK")
    writer.close()


async def test_streamed_responses_are_chunked_and_head_has_no_body(served):
    _, _, port = served
    out = await exchange(port, b"GET /stream HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in out
    assert out.endswith(b"4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n0\r\n\r\n")
    out = await exchange(port, b"HEAD /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"\r\n\r\n")
    assert b"Content-Length: 14" in out  # what a GET would have had: "HEAD /x 0 None"


async def test_errors_the_server_answers_itself(served):
    _, _, port = served
    out = await exchange(port, b"GET /boom HTTP/1.1\r\nHost: h\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error")
    assert out.endswith(b'{"error":"Internal server error"}') and b"secret" not in out
    out = await exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 Bad Request") and b"malformed request" in out
    out = await exchange(port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")


async def test_the_head_limit_holds_however_the_head_arrives(served):
    _, server, port = served
    limit = server.max_head_bytes
    # many small fields in one write, over the limit together
    many = b"".join(b"X-F%d: %b\r\n" % (i, b"v" * 90) for i in range(limit // 90))
    out = await exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\n" + many + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")
    # a head that never ends, sent in small writes: refused once the limit is passed, not read for ever
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.ensure_future(reader.read(200))
    sent = 0
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n")
        while not answer.done() and sent < 4 * limit:
            writer.write(b"X-Slow-%d: %b\r\n" % (sent, b"s" * 990))
            sent += 1000
            await writer.drain()
            await asyncio.sleep(0.001)
        out = await asyncio.wait_for(answer, 5)
    finally:
        writer.close()
    assert out.startswith(b"HTTP/1.1 431 "), out[:100]
    assert limit <= sent <= limit + 70_000  # refused soon after the limit (give or take one read)
    # a large head under the limit, in small writes, is served
    fields = b"".join(b"X-F%d: %b\r\n" % (i, b"v" * 90) for i in range(limit // 200))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        data = b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n" + fields + b"\r\n"
        for start in range(0, len(data), 700):
            writer.write(data[start : start + 700])
            await writer.drain()
        out = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"GET /ok 0 None")


async def test_a_client_that_goes_away_cancels_its_handler(served):
    app, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /hold HTTP/1.1\r\nHost: h\r\n\r\n")
    for _ in range(100):
        if app.seen:
            break
        await asyncio.sleep(0.01)
    writer.close()
    await asyncio.wait_for(app.cancelled.wait(), 5)


async def test_stop_lets_requests_in_flight_finish_and_closes_idle_connections(served):
    app, server, port = served
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_writer.write(b"GET /warm HTTP/1.1\r\nHost: h\r\n\r\n")
    await idle_reader.readuntil(b"None")
    held = asyncio.create_task(exchange(port, b"GET /hold HTTP/1.1\r\nHost: h\r\n\r\n"))
    for _ in range(100):
        if len(app.seen) == 2:
            break
        await asyncio.sleep(0.01)
    stopping = asyncio.create_task(server.stop(5.0))
    assert await asyncio.wait_for(idle_reader.read(-1), 5) == b""  # the idle keep-alive connection was closed
    await asyncio.sleep(0.1)
    assert not stopping.done()
    app.gate.set()
    out = await held
    assert out.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in out
    await stopping
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    idle_writer.close()


async def test_get_routes_answers_404_and_405():
    async def ok(request: Request) -> Response:
        return Response.text("ok")

    server = HttpServer(get_routes({"/metrics": ok}))
    port = await server.start("127.0.0.1", 0)
    try:
        assert (await exchange(port, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")).endswith(b"ok")
        assert b" 404 " in await exchange(port, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
        out = await exchange(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        assert b" 405 " in out and b"Allow: GET, HEAD" in out
    finally:
        await server.stop(1.0)


async def test_an_answer_before_the_body_is_read_reaches_the_client_whole(served):
    """The server reads and drops the rest of the body before closing (closing at once would reset the
    connection, and the client could lose the 413), and says Connection: close."""
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    size = 4 * 1024 * 1024
    writer.write(b"POST /early HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
    for _ in range(size // 65536):
        writer.write(b"x" * 65536)
        await writer.drain()
    out = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert out.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in out
    assert out.endswith(b'{"error":"too large"}')


async def test_a_head_that_never_finishes_gets_408_and_the_connection_closes():
    async def ok(request: Request) -> Response:
        return Response.text("ok")

    server = HttpServer(ok, head_timeout=0.2)
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ")  # and nothing more
        out = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
        assert out.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 0.2 s" in out
        # a client that sends its head at once is not affected
        assert (await exchange(port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")).endswith(b"ok")
    finally:
        await server.stop(1.0)
