"""HTTP body compression: gzip and deflate (a zlib stream) in both directions, never ``br``.

Request bodies are inflated with a size cap, so a small compressed body cannot expand past the server's
request limit. The response encoding is the highest-q of gzip/deflate/identity in ``Accept-Encoding`` (ties go
to the one listed first), as Triton chooses it.
"""

from __future__ import annotations

import zlib

from common.errors import InvalidInput, PayloadTooLarge

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
SUPPORTED = ("gzip", "deflate")


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return body
    wbits = _WBITS.get(name)
    if wbits is None:
        raise InvalidInput(f"unsupported Content-Encoding '{encoding}'; use gzip, deflate or identity")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {name} data: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"request body inflates to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise InvalidInput(f"request body is truncated {name} data")
    return out


def choose(accept_encoding: str | None) -> str | None:
    """The encoding to answer with, or None for identity."""
    if not accept_encoding:
        return None
    best, best_q = None, 0.0
    identity_q = 0.0  # identity competes only when listed; by default a listed gzip/deflate wins
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        q = _quality(params)
        if name == "identity":
            identity_q = q
        elif name in SUPPORTED and q > best_q:
            best, best_q = name, q
    if best is None or identity_q > best_q:
        return None
    return best


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "q":
            try:
                return max(0.0, min(1.0, float(value)))
            except ValueError:
                return 0.0
    return 1.0


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    else:
        compressor = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()
