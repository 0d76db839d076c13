"""Request ids made where a request came without one: UUID-4 shaped, distinct, and no system call per id."""

from __future__ import annotations

import random
import uuid

from common.request_ids import RequestIds


def test_ids_are_uuid4_shaped_and_distinct():
    ids = RequestIds()
    made = [ids.new() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    assert all(uuid.UUID(value).version == 4 and len(value) == 36 for value in made[:100])


def test_a_seeded_generator_repeats_and_two_unseeded_ones_differ():
    assert RequestIds(random.Random(7)).new() == RequestIds(random.Random(7)).new()
    assert RequestIds().new() != RequestIds().new()


def test_the_same_ids_as_the_uuid_module_makes_from_the_same_bits():
    bits = random.Random(3)
    expected = [str(uuid.UUID(int=bits.getrandbits(128), version=4)) for _ in range(1000)]
    ids = RequestIds(random.Random(3))
    assert [ids.new() for _ in range(1000)] == expected
