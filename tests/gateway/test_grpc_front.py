"""The gRPC front's byte handling, checked against the ``hpack`` package's own encoder and decoder: the authority
read from each header block of a long connection, the field it appends, the frames it rebuilds, its bytes fed in
every split, and every malformed input refused."""

from __future__ import annotations

import random

import pytest
from hpack import Decoder, Encoder

from gateway.grpc_front import AUTHORITY_HEADER, MAX_FRAME, MAX_HEADER_BLOCK, PREFACE, FrameError, RequestFrames
from gateway.hpack_authority import AuthorityReader, HpackError, literal_field

HEADERS, DATA, SETTINGS, CONTINUATION = 0x1, 0x0, 0x4, 0x9
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3) + bytes((kind, flags)) + stream.to_bytes(4) + payload


def request(authority: str, path: str = "/inference.GRPCInferenceService/ModelInfer", **extra: str) -> list:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
            ("te", "trailers"), ("content-type", "application/grpc"), *extra.items()]  # fmt: skip


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of each frame after the preface."""
    assert data.startswith(PREFACE)
    pos, found = len(PREFACE), []
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3])
        kind, flags, stream = data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5 : pos + 9])
        found.append((kind, flags, stream, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    assert pos == len(data)
    return found


def decoded(data: bytes) -> list[tuple]:
    """Every frame after the preface in order: ("block", stream, HEADERS flags, fields) for each header block,
    decoded by hpack's decoder, ("frame", bytes) for any other frame."""
    decoder, found, held = Decoder(), [], None
    for kind, flags, stream, payload in frames_of(data):
        if kind == HEADERS:
            assert held is None
            start, stop = 0, len(payload)
            if flags & PADDED:
                start, stop = 1, stop - payload[0]
            start += 5 if flags & PRIORITY else 0
            held = [stream, flags, payload[start:stop]]
        elif kind == CONTINUATION:
            assert held is not None and held[0] == stream
            held[2] += payload
        else:
            assert held is None
            found.append(("frame", frame(kind, flags, stream, payload)))
            continue
        if flags & END_HEADERS:
            found.append(("block", held[0], held[1], decoder.decode(held[2])))
            held = None
    return found


def header_blocks(data: bytes) -> list[tuple[int, int, list[tuple[str, str]]]]:
    """(stream, HEADERS flags, fields) of each header block."""
    return [item[1:] for item in decoded(data) if item[0] == "block"]


# -- AuthorityReader ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("huffman", [True, False])
def test_the_authority_of_each_block_of_a_long_connection_against_hpacks_encoder(huffman: bool) -> None:
    """Hundreds of blocks through one table: new and repeated authorities and metadata, values past 127 bytes (a
    multi-byte length), fields never indexed, table size updates down and back up; every block read right."""
    rng = random.Random(7)
    encoder, reader = Encoder(), AuthorityReader()
    hosts = [f"svc-{i}.default.example.com" for i in range(40)] + ["localhost:8081", "x" * 300]
    for n in range(600):
        if n % 97 == 50:
            encoder.header_table_size = rng.choice([0, 256, 4096])
        authority = rng.choice(hosts)
        fields = request(authority, **{f"k{rng.randrange(60)}": "v" * rng.randrange(200)})
        if n % 5 == 0:
            fields.append(("authorization", "Bearer " + "t" * rng.randrange(50)))
        block = encoder.encode(fields, huffman=huffman)
        assert reader.authority(block) == authority.encode(), n
    trailers = encoder.encode([("grpc-status", "0")], huffman=huffman)
    assert reader.authority(trailers) is None


def test_a_never_indexed_authority_and_one_added_to_the_table() -> None:
    from hpack import NeverIndexedHeaderTuple

    encoder, reader = Encoder(), AuthorityReader()
    first = encoder.encode([(":authority", "a.example.com"), (":path", "/x")])
    assert reader.authority(first) == b"a.example.com"
    hidden = encoder.encode([NeverIndexedHeaderTuple(":authority", "b.example.com"), (":path", "/x")])
    assert reader.authority(hidden) == b"b.example.com"
    assert reader.authority(encoder.encode([(":authority", "a.example.com")])) == b"a.example.com"  # indexed


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (b"\xbe", "header table index 62 is out of range"),  # nothing added yet
        (b"\x80", "header table index 0 is out of range"),
        (b"\x41\x85abc", "a string runs past the end of its header block"),
        (b"\x41", "a header block ends inside a field"),
        (b"\x3f\xe1\xff\x04", "a table size update to 81920 bytes"),  # 31 + 0x61 + (0x7f << 7) + (4 << 14)
        (b"\xff\xff\xff\xff\xff\xff", "an integer longer than 4 continuation bytes"),
        (b"\x41\x81\xff", "bad Huffman string"),  # a lone 0xff: padding longer than 7 bits
    ],
)
def test_malformed_blocks_are_refused(block: bytes, error: str) -> None:
    with pytest.raises(HpackError) as raised:
        AuthorityReader().authority(block)
    assert str(raised.value).startswith(error)


def test_the_appended_field_leaves_the_table_as_the_encoder_expects() -> None:
    encoder, decoder = Encoder(), Decoder()
    for n in range(50):
        fields = request(f"s{n % 7}.example.com", **{"x-n": str(n % 3)})
        value = ("v" * (n * 7)).encode()  # lengths across the 127-byte boundary
        decoded = decoder.decode(encoder.encode(fields) + literal_field(b"x-servelane-authority", value))
        assert decoded == [*fields, ("x-servelane-authority", value.decode())]


# -- RequestFrames -----------------------------------------------------------------------------------------------
def _connection(blocks: list[bytes], body: bytes = b"\x00\x00\x00\x00\x05hello") -> bytes:
    data = PREFACE + frame(SETTINGS, 0, 0, b"")
    for stream, block in enumerate(blocks, start=1):
        stream = 2 * stream - 1
        data += frame(HEADERS, END_HEADERS, stream, block) + frame(DATA, END_STREAM, stream, body)
    return data


def test_request_blocks_gain_the_authority_field_and_everything_else_passes_unchanged() -> None:
    encoder = Encoder()
    authorities = ["iris.default.example.com", "iris.default.example.com", "localhost:8081", "other.example.com"]
    data = _connection([encoder.encode(request(a, **{"x-request-id": str(i)})) for i, a in enumerate(authorities)])
    data += frame(HEADERS, END_HEADERS | END_STREAM, 1, encoder.encode([("grpc-status", "0")]))  # no authority
    out = b"".join(RequestFrames().feed(data))
    blocks = header_blocks(out)
    for (_, flags, fields), authority, i in zip(blocks, authorities, range(4), strict=False):
        assert fields == [*request(authority, **{"x-request-id": str(i)}), (AUTHORITY_HEADER, authority)]
        assert flags == END_HEADERS
    assert blocks[4] == (1, END_HEADERS | END_STREAM, [("grpc-status", "0")])
    other = [f for f in frames_of(out) if f[0] != HEADERS]
    assert other == [f for f in frames_of(data) if f[0] != HEADERS]  # SETTINGS and DATA, byte for byte


def test_fed_in_every_split_the_output_is_the_same() -> None:
    encoder = Encoder()
    data = _connection([encoder.encode(request(f"s{i}.example.com")) for i in range(3)], body=b"\x00" * 300)
    whole = b"".join(RequestFrames().feed(data))
    for size in (1, 2, 7, 9, 10, 64):
        frames = RequestFrames()
        pieces = [b"".join(frames.feed(data[at : at + size])) for at in range(0, len(data), size)]
        assert b"".join(pieces) == whole, size
    for cut in range(1, len(data)):
        frames = RequestFrames()
        assert b"".join(frames.feed(data[:cut]) + frames.feed(data[cut:])) == whole, cut


def test_a_large_data_frame_streams_through_without_being_held() -> None:
    frames = RequestFrames()
    head = PREFACE + frame(DATA, 0, 1, b"")[:9]
    assert b"".join(frames.feed(head)) == head
    big = (10 * 1024 * 1024).to_bytes(3) + bytes((DATA, 0)) + (1).to_bytes(4)
    assert frames.feed(big) == [big]
    chunk = b"z" * 65536
    assert all(frames.feed(chunk) == [chunk] for _ in range(160))  # passed on as it comes, each chunk whole


def test_padding_priority_and_continuations_are_read_and_rebuilt() -> None:
    encoder = Encoder()
    fields = request("iris.default.example.com", **{"x-big": "b" * 40000})  # past one frame once the field is added
    block = encoder.encode(fields, huffman=False)
    priority = b"\x00\x00\x00\x03\x10"
    first = bytes((5,)) + priority + block[:1000] + b"\x00" * 5  # PADDED (5 bytes) and PRIORITY
    data = PREFACE + frame(HEADERS, PADDED | PRIORITY | END_STREAM, 3, first)
    data += frame(CONTINUATION, 0, 3, block[1000:20000]) + frame(CONTINUATION, END_HEADERS, 3, block[20000:])
    out = b"".join(RequestFrames().feed(data))
    ((stream, flags, decoded),) = header_blocks(out)
    assert (stream, decoded) == (3, [*fields, (AUTHORITY_HEADER, "iris.default.example.com")])
    assert flags == PRIORITY | END_STREAM  # padding dropped; END_HEADERS is on the last CONTINUATION
    rebuilt = frames_of(out)
    assert rebuilt[0][3][:5] == priority
    assert [k for k, *_ in rebuilt] == [HEADERS, CONTINUATION, CONTINUATION]
    assert all(len(payload) <= MAX_FRAME for *_, payload in rebuilt)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "the connection does not start with the HTTP/2 preface"),
        (PREFACE + frame(CONTINUATION, END_HEADERS, 1, b"\x82"), "a CONTINUATION frame that continues no header"),
        (PREFACE + frame(HEADERS, 0, 1, b"\x82") + frame(DATA, 0, 1, b""), "a frame other than CONTINUATION"),
        (PREFACE + frame(HEADERS, 0, 1, b"\x82") + frame(HEADERS, END_HEADERS, 3, b"\x82"), "a HEADERS frame inside"),
        (PREFACE + frame(HEADERS, 0, 1, b"\x82") + frame(CONTINUATION, END_HEADERS, 3, b"\x82"), "a CONTINUATION"),
        (PREFACE + frame(HEADERS, END_HEADERS, 1, b"\xbe"), "header table index 62 is out of range"),
        (PREFACE + frame(HEADERS, END_HEADERS | PADDED, 1, b"\x09\x82"), "a HEADERS frame's padding is longer"),
        (PREFACE + frame(HEADERS, END_HEADERS | PADDED, 1, b""), "a padded HEADERS frame without its pad length"),
        (PREFACE + frame(0x5, END_HEADERS, 1, b"\x00\x00\x00\x02"), "PUSH_PROMISE from a client"),
        (PREFACE + (MAX_HEADER_BLOCK + 1).to_bytes(3) + b"\x01\x04\x00\x00\x00\x01", "a 1048577-byte header frame"),
    ],
)
def test_bytes_that_cannot_be_followed_are_refused(data: bytes, error: str) -> None:
    with pytest.raises(FrameError) as raised:
        RequestFrames().feed(data)
    assert str(raised.value).startswith(error)


def test_a_header_block_split_past_the_limit_is_refused() -> None:
    frames = RequestFrames()
    frames.feed(PREFACE + frame(HEADERS, 0, 1, b"\x82" * 1000))
    piece = frame(CONTINUATION, 0, 1, b"\x82" * 16384)
    with pytest.raises(FrameError, match="a header block over 1048576 bytes"):
        for _ in range(70):
            frames.feed(piece)


def test_random_connections_in_random_pieces_keep_every_frame_and_field() -> None:
    """Many connections of random frames (blocks in one frame or several, padded or not, with priority or not,
    large DATA frames, other frame types) fed in random pieces: every header block decodes (with hpack's decoder,
    in order) to what was sent plus the authority field, every other frame comes out byte for byte, in order."""
    rng = random.Random(11)
    for _ in range(40):
        encoder, stream = Encoder(), 1
        data, sent = PREFACE, []  # sent: ("block", fields) or ("frame", bytes), in order
        for _ in range(rng.randrange(1, 30)):
            kind = rng.random()
            if kind < 0.4:
                authority = rng.choice(["a.example.com", "b.example.com:8081", "c" * 200])
                fields = request(authority, **{f"m{i}": "x" * rng.randrange(300) for i in range(rng.randrange(4))})
                if rng.random() < 0.2:
                    fields = [("grpc-status", "0")]  # trailers: no authority, passed as they came
                block = encoder.encode(fields, huffman=rng.random() < 0.5)
                data += _random_block_frames(rng, block, stream)
                sent.append(("block", fields))
                stream += 2
            else:
                if kind < 0.8:
                    payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 5, 100, 20000])))
                    raw = frame(DATA, rng.choice([0, END_STREAM]), stream, payload)
                else:
                    raw = frame(rng.choice([SETTINGS, 0x6, 0x8]), 0, 0, b"\x00" * 8)  # SETTINGS, PING, WINDOW_UPDATE
                data += raw
                sent.append(("frame", raw))
        frames, out, at = RequestFrames(), [], 0
        while at < len(data):
            size = rng.choice([1, 3, 9, 17, 100, 4096, 70000])
            out += frames.feed(data[at : at + size])
            at += size
        _check_output(b"".join(out), sent)


def _random_block_frames(rng: random.Random, block: bytes, stream: int) -> bytes:
    pieces, at = [], 0
    while True:  # the block in one or more fragments
        size = rng.choice([len(block), 1, 10, 500])
        pieces.append(block[at : at + size])
        at += size
        if at >= len(block):
            break
    flags, prefix, padding = END_STREAM if rng.random() < 0.1 else 0, b"", b""
    if rng.random() < 0.3:
        flags |= PADDED
        padding = b"\x00" * rng.randrange(10)
        prefix += bytes((len(padding),))
    if rng.random() < 0.3:
        flags |= PRIORITY
        prefix += b"\x00\x00\x00\x00\x10"
    out = frame(HEADERS, flags | (END_HEADERS if len(pieces) == 1 else 0), stream, prefix + pieces[0] + padding)
    for n, piece in enumerate(pieces[1:], start=2):
        out += frame(CONTINUATION, END_HEADERS if n == len(pieces) else 0, stream, piece)
    return out


def _check_output(out: bytes, sent: list) -> None:
    got = [item if item[0] == "frame" else ("block", item[3]) for item in decoded(out)]
    expected = []
    for kind, item in sent:
        authority = dict(item).get(":authority") if kind == "block" else None
        expected.append((kind, [*item, (AUTHORITY_HEADER, authority)] if authority else item))
    assert got == expected
