"""The lean upstream client against a real aiohttp server: keep-alive reuse, a stale connection retried, HEAD,
204, chunked bodies both ways, refused connections."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from common.lifecycle import bound_port, free_port
from common.upstream import UpstreamPool


async def serve(keepalive: float = 75.0):
    connections = []

    async def echo(request: web.Request) -> web.Response:
        connections.append(request.transport)
        return web.Response(body=await request.read(), headers={"X-Method": request.method})

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/empty", empty)
    runner = web.AppRunner(app, keepalive_timeout=keepalive)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, connections


async def test_keep_alive_reuse_and_a_stale_connection_retried():
    runner, connections = await serve(keepalive=0.2)
    pool = UpstreamPool("127.0.0.1", bound_port(runner))
    try:
        for _ in range(2):
            answer = await pool.request("POST", "/echo", [("Host", "x")], b"hello", 5)
            assert answer.status == 200 and await answer.read() == b"hello"
            answer.release()
        assert connections[0] is connections[1]  # the second request reused the connection
        await asyncio.sleep(0.5)  # the server closes the idle connection meanwhile
        answer = await pool.request("POST", "/echo", [("Host", "x")], b"again", 5)
        assert await answer.read() == b"again"
        answer.release()
        assert len({id(t) for t in connections}) == 2
    finally:
        pool.close()
        await runner.cleanup()


async def test_head_and_no_content():
    runner, _ = await serve()
    pool = UpstreamPool("127.0.0.1", bound_port(runner))
    try:
        answer = await pool.request("HEAD", "/echo", [("Host", "x")], None, None)
        assert answer.status == 200 and answer.header("x-method") == "HEAD" and await answer.read() == b""
        answer.release()
        answer = await pool.request("GET", "/empty", [("Host", "x")], None, None)
        assert answer.status == 204 and await answer.read() == b""
        answer.release()
        answer = await pool.request("GET", "/echo", [("Host", "x")], None, None)
        assert answer.status == 200
        answer.release()
    finally:
        pool.close()
        await runner.cleanup()


async def test_streamed_request_body_is_sent_chunked():
    from aiohttp import StreamReader
    from aiohttp.base_protocol import BaseProtocol

    runner, _ = await serve()
    pool = UpstreamPool("127.0.0.1", bound_port(runner))
    loop = asyncio.get_running_loop()
    body = StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    for piece in (b"a" * 70000, b"b" * 10):
        body.feed_data(piece)
    body.feed_eof()
    try:
        answer = await pool.request("POST", "/echo", [("Host", "x")], body, None)
        assert await answer.read() == b"a" * 70000 + b"b" * 10
        answer.release()
    finally:
        pool.close()
        await runner.cleanup()


async def test_refused_connection_raises_oserror():
    pool = UpstreamPool("127.0.0.1", free_port())
    with pytest.raises(ConnectionRefusedError):
        await pool.request("GET", "/", [("Host", "x")], None, None)


async def test_an_interim_answer_before_the_response_leaves_only_the_final_head():
    """1xx heads (here 103 Early Hints) before the real one, in the same read as it or apart from it, split inside
    the final head too: the response has the final status, its fields only, and its body."""
    final = b"HTTP/1.1 200 OK\r\nX-Final: yes\r\nContent-Length: 2\r\n\r\nok"
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    ways = [
        [interim + final], [interim, final], [interim + final[:20], final[20:]], [interim[:30], interim[30:] + final]
    ]

    answered = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for pieces in ways:
                await reader.readuntil(b"\r\n\r\n")
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)
        finally:
            writer.close()
            await writer.wait_closed()
            answered.set()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    pool = UpstreamPool("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        for _ in ways:  # one kept-alive connection for all four
            response = await pool.request("GET", "/", [("Host", "x")], None, None)
            assert (response.status, response.header("x-final"), response.header("link")) == (200, "yes", None)
            assert response.raw == [(b"X-Final", b"yes"), (b"Content-Length", b"2")] and await response.read() == b"ok"
            response.release()
    finally:
        pool.close()
        await asyncio.wait_for(answered.wait(), 5)
        server.close()
        await server.wait_closed()
