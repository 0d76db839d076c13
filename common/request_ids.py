"""``x-request-id`` values for requests that arrive without one (the gateway, and the activator to come).

UUID-4 shaped, drawn from a PRNG seeded once from the OS: request ids must be unique, not secret, and
``uuid.uuid4()`` makes a ``getrandom()`` system call per request (a few µs each on the machines we measure on).
"""

from __future__ import annotations

import random

# RFC 9562's UUID version 4: the version nibble is 4 and the variant's two bits are 10; the rest is random.
_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_SET = (0x4000 << 64) | (0x8000 << 48)


class RequestIds:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # seeded from os.urandom

    def new(self) -> str:
        digits = "%032x" % (self._rng.getrandbits(128) & _CLEAR | _SET)
        return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
