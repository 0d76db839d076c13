"""The gateway's gRPC port: a byte relay in front of the gRPC proxy that shows it each call's ``:authority``.

grpc python's server hides the ``:authority`` a client sends (grpc/grpc#38906, open in grpcio 1.85), yet KServe users
route gRPC by it (``grpc.default_authority``, or a client behind Envoy). So the public gRPC port is this relay, and
the gRPC proxy listens on a Unix socket in a private directory behind it. Each client connection gets one
connection to that socket. Bytes from the server pass unread. Bytes from the client are split into HTTP/2 frames
(RFC 9113) and passed on unchanged, except for header blocks: each one is read by the connection's
:class:`~gateway.hpack_authority.AuthorityReader`, and a block with an ``:authority`` gets one more field,
``x-servelane-authority`` (:data:`AUTHORITY_HEADER`), with its value, appended at its end as a literal that the
table does not keep, so the server's HPACK state stays the client's. The router reads the last value of that field
(a client's own copy comes before it).

DATA and every other frame stream through as they arrive, whatever their size; only header blocks (HEADERS and
its CONTINUATIONs) are held until whole, up to :data:`MAX_HEADER_BLOCK` bytes. A connection whose frames are not
valid HTTP/2 or whose header block is not valid HPACK is closed, as the server would (it could no longer be read).
Each direction stops reading while the other cannot keep up (transport write limits).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

from gateway.hpack_authority import AuthorityReader, HpackError, literal_field

log = logging.getLogger(__name__)

AUTHORITY_HEADER = "x-servelane-authority"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_HEADER_BLOCK = 1024 * 1024  # bytes held for one header block; more ends the connection
MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE's initial value: rebuilt header frames never exceed it
_HEADERS, _PUSH_PROMISE, _CONTINUATION = 0x1, 0x5, 0x9
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20
_HIGH_WATER = 256 * 1024  # per transport: past this, the other side stops reading
_FIELD_NAME = AUTHORITY_HEADER.encode()
_FRAME_HEAD = struct.Struct(">IBI")  # length (24 bits) and type in one word, flags, stream (RFC 9113 4.1)


class FrameError(ValueError):
    """The client's bytes are not HTTP/2 this relay can follow."""


class RequestFrames:
    """The client-to-server byte stream of one connection: ``feed(data)`` gives the bytes to send on, with each
    request header block carrying its ``:authority`` as :data:`AUTHORITY_HEADER` too. Bytes that pass unchanged go
    on in runs as long as they arrived (one slice per run, the chunk itself when nothing in it changed)."""

    __slots__ = (
        "_reader", "_preface", "_pending", "_passing", "_block", "_fragments", "_block_head", "_held", "_field",
    )  # fmt: skip

    def __init__(self) -> None:
        self._reader = AuthorityReader()
        self._preface = len(PREFACE)  # preface bytes still to come
        self._pending = b""  # an incomplete frame header, or an incomplete HEADERS/CONTINUATION frame
        self._passing = 0  # bytes of a frame being passed through that have not arrived yet
        self._block: list[bytes] | None = None  # the frames of a header block still missing its END_HEADERS
        self._fragments: list[bytes] = []  # and their parts of the block
        self._held = 0  # their bytes
        self._block_head = (0, 0, b"")  # that block's stream, HEADERS flags and priority fields
        self._field = (b"", b"")  # the last authority seen and its encoded field (a connection keeps one authority)

    def feed(self, data: bytes) -> list[bytes]:
        """The bytes to send on for ``data`` (possibly none yet, while a header frame is incomplete)."""
        out: list[bytes] = []
        if self._pending:
            data = self._pending + data
            self._pending = b""
        pos, end = 0, len(data)
        if self._passing:
            pos = min(self._passing, end)
            self._passing -= pos
        if self._preface and pos < end:
            pos = self._take_preface(data, pos)
        run = 0  # where the bytes passed unchanged since the last cut begin
        while pos < end:
            if end - pos < 9:
                self._pending = data[pos:]
                break
            word, flags, stream = _FRAME_HEAD.unpack_from(data, pos)
            length, kind = word >> 8, word & 0xFF
            if kind == _HEADERS or kind == _CONTINUATION:
                if length > MAX_HEADER_BLOCK:
                    raise FrameError(f"a {length}-byte header frame (at most {MAX_HEADER_BLOCK} here)")
                stop = pos + 9 + length
                if stop > end:
                    self._pending = data[pos:]
                    break
                if self._block is None and flags & _END_HEADERS and kind == _HEADERS:  # nearly every block
                    rebuilt = self._one_frame_block(data, pos, stop, flags, stream & 0x7FFFFFFF)
                else:
                    rebuilt = self._block_frame(data[pos:stop], kind, flags, stream & 0x7FFFFFFF)
                if rebuilt is not None:  # cut the run: what came before, then the frames in this one's place
                    if run < pos:
                        out.append(data[run:pos])
                    out += rebuilt
                    run = stop
                pos = stop
            else:
                if self._block is not None:
                    raise FrameError("a frame other than CONTINUATION inside a header block")
                if kind == _PUSH_PROMISE:
                    raise FrameError("PUSH_PROMISE from a client")
                pos += 9 + length
                if pos > end:
                    self._passing = pos - end
                    pos = end
        stop = end - len(self._pending)
        if run < stop:
            out.append(data if run == 0 and stop == end else data[run:stop])
        return out

    def _take_preface(self, data: bytes, pos: int) -> int:
        taken = min(self._preface, len(data) - pos)
        seen = len(PREFACE) - self._preface
        if data[pos : pos + taken] != PREFACE[seen : seen + taken]:
            raise FrameError("the connection does not start with the HTTP/2 preface (gRPC needs prior knowledge)")
        self._preface -= taken
        return pos + taken

    def _one_frame_block(self, data: bytes, pos: int, stop: int, flags: int, stream: int) -> list[bytes] | None:
        """A HEADERS frame with END_HEADERS at ``data[pos:stop]``: None when it passes as it is."""
        start, priority = pos + 9, b""
        if flags & (_PADDED | _PRIORITY):
            start, stop, priority = _headers_payload(data, start, stop, flags)
        return self._rebuilt(data[start:stop], stream, flags, priority)

    def _block_frame(self, frame: bytes, kind: int, flags: int, stream: int) -> list[bytes] | None:
        """A frame of a header block in several frames: held until END_HEADERS, then [] (still held), or the frames
        to send in their place (as they came, or rebuilt)."""
        if kind == _HEADERS:
            if self._block is not None:
                raise FrameError("a HEADERS frame inside another header block")
            start, stop, priority = _headers_payload(frame, 9, len(frame), flags)
            self._block, self._fragments = [frame], [frame[start:stop]]
            self._block_head = (stream, flags, priority)
            self._held = len(frame)
            return []
        if self._block is None or stream != self._block_head[0]:
            raise FrameError("a CONTINUATION frame that continues no header block on its stream")
        self._held += len(frame)
        if self._held > MAX_HEADER_BLOCK:
            raise FrameError(f"a header block over {MAX_HEADER_BLOCK} bytes")
        self._block.append(frame)
        self._fragments.append(frame[9:])
        if not flags & _END_HEADERS:
            return []
        frames, block = self._block, b"".join(self._fragments)
        self._block, self._fragments = None, []
        stream, flags, priority = self._block_head
        rebuilt = self._rebuilt(block, stream, flags, priority)
        return frames if rebuilt is None else rebuilt

    def _rebuilt(self, block: bytes, stream: int, flags: int, priority: bytes) -> list[bytes] | None:
        """Read a whole header block: None when it has no authority (trailers), else its frames with the authority
        field added."""
        try:
            authority = self._reader.authority(block)
        except HpackError as exc:
            raise FrameError(str(exc)) from None
        if authority is None:
            return None
        if authority != self._field[0]:
            self._field = (authority, literal_field(_FIELD_NAME, authority))
        block += self._field[1]
        first = MAX_FRAME - len(priority)
        if len(block) <= first:
            head = _FRAME_HEAD.pack(len(priority) + len(block) << 8 | _HEADERS,
                                    flags & (_END_STREAM | _PRIORITY) | _END_HEADERS, stream)  # fmt: skip
            return [head + priority + block]
        out = [_frame(_HEADERS, flags & (_END_STREAM | _PRIORITY), stream, priority + block[:first])]
        for at in range(first, len(block), MAX_FRAME):
            last = at + MAX_FRAME >= len(block)
            out.append(_frame(_CONTINUATION, _END_HEADERS if last else 0, stream, block[at : at + MAX_FRAME]))
        return out


def _headers_payload(data: bytes, start: int, stop: int, flags: int) -> tuple[int, int, bytes]:
    """A HEADERS frame's payload at ``data[start:stop]`` without its pad length, priority fields and padding:
    where its block fragment starts and stops, and the 5 priority bytes (empty when it has none)."""
    priority = b""
    if flags & _PADDED:
        if stop == start:
            raise FrameError("a padded HEADERS frame without its pad length")
        stop -= data[start]
        start += 1
    if flags & _PRIORITY:
        priority = data[start : start + 5]
        start += 5
    if stop < start:
        raise FrameError("a HEADERS frame's padding is longer than the frame")
    return start, stop, priority


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3) + bytes((kind, flags)) + stream.to_bytes(4) + payload


class GrpcFront:
    """The public gRPC listener: ``await start(host, port)`` (the port bound), ``backend`` (the ``unix:`` address
    the gRPC proxy must listen on, in a directory only this user can enter), ``close()`` to stop accepting,
    ``await stop()`` to end every connection and remove the directory."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="servelane-grpc-"))  # mode 0700
        self.socket = self._dir / "proxy.sock"
        self._server: asyncio.Server | None = None
        self._connections: set[_ClientSide] = set()

    def __repr__(self) -> str:
        return f"<GrpcFront {self.backend} {len(self._connections)} connections>"

    @property
    def backend(self) -> str:
        return f"unix:{self.socket}"

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ClientSide(self), host, port)
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Take no new connections; those open go on."""
        if self._server is not None:
            self._server.close()

    async def stop(self) -> None:
        self.close()
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await asyncio.sleep(0)  # let the transports closed above call connection_lost
        shutil.rmtree(self._dir, ignore_errors=True)

    def _opened(self, connection: _ClientSide) -> None:
        self._connections.add(connection)

    def _closed(self, connection: _ClientSide) -> None:
        self._connections.discard(connection)


class _Side(asyncio.Protocol):
    """One end of a relayed connection: it writes what the other end reads, and stops the other end's reading
    while its own transport's buffer is full."""

    transport: asyncio.Transport | None = None
    other: _Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=_HIGH_WATER)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _ClientSide(_Side):
    def __init__(self, front: GrpcFront) -> None:
        self.front = front
        self.frames = RequestFrames()
        # what was read before the server side connected (reading is paused, but a first chunk may come anyway)
        self.early: list[bytes] = []
        self.connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # type: ignore[attr-defined]  # until the server side is connected
        self.front._opened(self)
        self.connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, server = await loop.create_unix_connection(lambda: _ServerSide(self), os.fspath(self.front.socket))
        except OSError as exc:
            log.warning("gRPC front: cannot reach the gRPC proxy at %s: %s", self.front.socket, exc)
            self.close()
            return
        if self.transport is None:  # the client left meanwhile
            server.close()
            return
        self.other = server
        if self.early:
            server.transport.writelines(self.early)  # type: ignore[union-attr]
            self.early = []
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        try:
            out = self.frames.feed(data)
        except FrameError as exc:
            log.info("gRPC front: closing a connection from %s: %s", self._peer(), exc)
            self.close()
            return
        if self.other is None:
            self.early += out
        elif out:
            self.other.transport.writelines(out)  # type: ignore[union-attr]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.front._closed(self)
        self.transport = None
        if self.other is not None:
            self.other.close()  # after what it has buffered is written

    def _peer(self) -> object:
        return None if self.transport is None else self.transport.get_extra_info("peername")


class _ServerSide(_Side):
    def __init__(self, client: _ClientSide) -> None:
        self.other = client

    def data_received(self, data: bytes) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        if self.other is not None:
            self.other.close()
