"""Ids for requests that arrive without one: the gateway's ``x-request-id`` (the activator's to come) and the model
server's response ``id``.

32 random hex digits, as nginx's ``$request_id``: unique, and telling a client nothing about other requests (a
counter would show how many the process served in between). Drawn from a PRNG seeded once from the OS, since
request ids must be unique, not secret, and ``uuid.uuid4()`` makes a ``getrandom()`` system call per id; and not
in UUID form, whose dashes cost the gateway's lane more than the draw itself.
"""

from __future__ import annotations

import random


class RequestIds:
    __slots__ = ("_bits",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._bits = (rng or random.Random()).getrandbits  # an unseeded Random is seeded from os.urandom

    def new(self) -> str:
        return f"{self._bits(128):032x}"
