"""The prefix-cache's matching primitive against a plain loop."""

from __future__ import annotations

import random

from vllm_service.engine.llamacpp.sequence import common_prefix


def _naive(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_edges() -> None:
    assert common_prefix([], [1, 2]) == 0
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 3], [1, 2]) == 2
    assert common_prefix([9, 2, 3], [1, 2, 3]) == 0
    assert common_prefix([1, 2, 3, 4], [1, 2, 3, 5]) == 3


def test_matches_a_plain_loop_on_random_lists() -> None:
    rng = random.Random(7)
    for _ in range(500):
        shared = [rng.randrange(50) for _ in range(rng.randrange(0, 300))]
        a = shared + [rng.randrange(3) for _ in range(rng.randrange(0, 20))]
        b = shared + [rng.randrange(3) for _ in range(rng.randrange(0, 20))]
        assert common_prefix(a, b) == _naive(a, b)
