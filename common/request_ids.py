"""``x-request-id`` values for requests that arrive without one (the gateway, and the activator to come).

UUID-4 shaped, drawn from a PRNG seeded once from the OS: request ids must be unique, not secret, and
``uuid.uuid4()`` makes a ``getrandom()`` system call per request (a few µs each on the machines we measure on).
"""

from __future__ import annotations

import random
import uuid


class RequestIds:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # seeded from os.urandom

    def new(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
