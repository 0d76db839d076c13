"""Request ids made where a request came without one: 32 hex digits, distinct, and no system call per id."""

from __future__ import annotations

import random
import re

from common.request_ids import RequestIds


def test_ids_are_32_hex_digits_and_distinct():
    ids = RequestIds()
    made = [ids.new() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    assert all(re.fullmatch("[0-9a-f]{32}", value) for value in made)


def test_a_seeded_generator_repeats_and_two_unseeded_ones_differ():
    assert RequestIds(random.Random(7)).new() == RequestIds(random.Random(7)).new()
    assert RequestIds().new() != RequestIds().new()


def test_every_bit_is_drawn():
    bits = random.Random(3)
    expected = [f"{bits.getrandbits(128):032x}" for _ in range(1000)]
    ids = RequestIds(random.Random(3))
    assert [ids.new() for _ in range(1000)] == expected
