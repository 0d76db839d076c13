"""Reads ``:authority`` out of one HTTP/2 connection's request header blocks (HPACK, RFC 7541), for the gRPC front.

An HPACK block is only readable by a decoder that has followed every earlier block of the same connection, because
fields refer to a dynamic table the blocks build up. :class:`AuthorityReader` is that decoder, cut down to what the
front needs: it keeps the table exactly (every insertion, eviction and size update, so the next block is read
right) and answers each block's ``:authority``; every other field is parsed and dropped. Huffman-coded strings are
decoded by the ``hpack`` package; the integers, strings and table are done here because ``hpack``'s full decoder
builds an object per field (tens of microseconds per block, against a few here).

Any malformed block raises :class:`HpackError`: the table can no longer be trusted, so the connection must end.
"""

from __future__ import annotations

from collections import deque

from hpack import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

AUTHORITY = b":authority"
STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE  # indices 1-61
_STATIC_LEN = len(STATIC)
_LAST_STATIC_BYTE = 0x80 | _STATIC_LEN  # an indexed field's first byte up to this names a static entry
_STATIC_AUTHORITY_BYTE = 0x80 | 1 + STATIC.index((AUTHORITY, b""))
_ENTRY_OVERHEAD = 32  # RFC 7541 4.1: an entry's size is its name's and value's octets plus 32
DEFAULT_TABLE_SIZE = 4096  # SETTINGS_HEADER_TABLE_SIZE's initial value (RFC 9113 6.5.2)
MAX_TABLE_SIZE = 64 * 1024  # the most a size update may ask for here; a gRPC server offers 4096


class HpackError(ValueError):
    """A header block that is not valid HPACK (or asks for more table than :data:`MAX_TABLE_SIZE`)."""


class AuthorityReader:
    """One connection's request-direction HPACK state. ``authority(block)`` for each header block, in order."""

    __slots__ = ("_table", "_size", "_max_size")

    def __init__(self) -> None:
        self._table: deque[tuple[bytes, bytes]] = deque()  # newest first: index 62 is _table[0]
        self._size = 0
        self._max_size = DEFAULT_TABLE_SIZE

    def __repr__(self) -> str:
        return f"<AuthorityReader {len(self._table)} entries, {self._size}/{self._max_size} bytes>"

    def authority(self, block: bytes) -> bytes | None:
        """The block's ``:authority`` (its last, should there be several), or None; the table follows the block."""
        found = None
        pos, end = 0, len(block)
        table = self._table
        try:
            while pos < end:
                first = block[pos]
                if 0x80 < first < 0xFF:  # indexed field (6.1) with a one-byte index: most fields of most blocks
                    pos += 1
                    if first > _LAST_STATIC_BYTE:
                        at = first - _LAST_STATIC_BYTE - 1
                        if at >= len(table):
                            raise HpackError(f"header table index {first & 0x7F} is out of range")
                        name, value = table[at]
                        if name == AUTHORITY:
                            found = value
                    elif first == _STATIC_AUTHORITY_BYTE:  # the only static entry named :authority, its value empty
                        found = b""
                elif first & 0x80:  # indexed field, index 0 or one of more than one byte
                    index, pos = _integer(block, pos, 0x7F)
                    name, value = self._entry(index)
                    if name == AUTHORITY:
                        found = value
                elif first & 0x40:  # literal, added to the table (6.2.1)
                    name, value, pos = self._literal(block, pos, 0x3F)
                    self._add(name, value)
                    if name == AUTHORITY:
                        found = value
                elif first & 0x20:  # table size update (6.3)
                    size, pos = _integer(block, pos, 0x1F)
                    if size > MAX_TABLE_SIZE:
                        raise HpackError(f"a table size update to {size} bytes (at most {MAX_TABLE_SIZE} here)")
                    self._max_size = size
                    self._evict(0)
                else:  # literal not added, or never added (6.2.2, 6.2.3)
                    name, value, pos = self._literal(block, pos, 0x0F)
                    if name == AUTHORITY:
                        found = value
        except IndexError:
            raise HpackError("a header block ends inside a field") from None
        return found

    def _literal(self, block: bytes, pos: int, mask: int) -> tuple[bytes, bytes, int]:
        index, pos = _integer(block, pos, mask)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = _string(block, pos)
        value, pos = _string(block, pos)
        return name, value, pos

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LEN:
            return STATIC[index - 1]
        at = index - _STATIC_LEN - 1
        if index == 0 or at >= len(self._table):
            raise HpackError(f"header table index {index} is out of range")
        return self._table[at]

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self._max_size:  # 4.4: an entry larger than the table empties it and is not added
            self._table.clear()
            self._size = 0
            return
        self._evict(size)
        self._table.appendleft((name, value))
        self._size += size

    def _evict(self, room: int) -> None:
        table = self._table
        while table and self._size + room > self._max_size:
            name, value = table.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD


def _integer(data: bytes, pos: int, mask: int) -> tuple[int, int]:
    """An N-bit prefix integer (5.1) starting at ``data[pos]``; the value and the position after it."""
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("an integer longer than 4 continuation bytes")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    """A string literal (5.2): Huffman-decoded when its H bit is set."""
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 0x7F)
    end = pos + length
    if end > len(data):
        raise HpackError("a string runs past the end of its header block")
    raw = data[pos:end]
    if huffman:
        try:
            raw = decode_huffman(raw)
        except HPACKDecodingError as exc:
            raise HpackError(f"bad Huffman string: {exc}") from None
    return raw, end


def literal_field(name: bytes, value: bytes) -> bytes:
    """``name: value`` as a literal field not added to the table (6.2.2) with plain strings: appended to a block, it
    leaves the decoder's table as the sender's encoder expects it."""
    return b"\x00" + _plain_string(name) + _plain_string(value)


def _plain_string(data: bytes) -> bytes:
    length = len(data)
    if length < 0x7F:
        return bytes((length,)) + data
    head, length = bytearray((0x7F,)), length - 0x7F
    while length >= 0x80:
        head.append(length & 0x7F | 0x80)
        length >>= 7
    head.append(length)
    return bytes(head) + data
