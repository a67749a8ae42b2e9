from __future__ import annotations

import random

from modelyard.routing.contracts import block_hashes
from modelyard.routing.prefix_index import PrefixIndex


def chain(seed: str, blocks: int) -> tuple[int, ...]:
    return block_hashes((seed * 64)[:64] * blocks, 64, blocks)


def test_matches_count_leading_blocks_per_replica() -> None:
    index = PrefixIndex()
    system = "s" * 64 * 4
    index.insert(0, block_hashes(system + "a" * 128, 64, 100), capacity=100)
    index.insert(1, block_hashes(system, 64, 100), capacity=100)
    request = block_hashes(system + "a" * 64 + "z" * 64, 64, 100)
    assert index.matches(request) == {0: 5, 1: 4}
    assert index.matches(block_hashes("n" * 640, 64, 100)) == {}
    assert index.matches(()) == {}


def test_memory_is_bounded_by_the_capacities_whatever_the_traffic() -> None:
    index = PrefixIndex()
    for n in range(2000):
        index.insert(n % 4, block_hashes(f"{n:08d}" * 80, 64, 10), capacity=50)
    assert len(index) == 4 * 50
    assert all(index.blocks(r) == 50 for r in range(4))
    assert index.distinct_blocks <= 4 * 50


def test_least_recently_used_prefixes_are_evicted_first_and_a_prefix_head_last() -> None:
    index = PrefixIndex()
    old, hot, new = (block_hashes(c * 64 * 4, 64, 100) for c in "ohn")
    index.insert(0, old, capacity=8)
    index.insert(0, hot, capacity=8)
    index.insert(0, hot, capacity=8)  # used again: most recent
    index.insert(0, new, capacity=8)  # 12 blocks for 8 slots: the oldest prefix loses its tail first
    assert index.matches(hot) == {0: 4}
    assert index.matches(new) == {0: 4}
    assert index.blocks(0) == 8
    assert index.matches(old) == {}
    index.insert(0, block_hashes("p" * 64 * 2, 64, 100), capacity=8)
    assert index.matches(hot) == {0: 2}  # the least recent prefix loses its tail, keeps its head
    assert index.matches(new) == {0: 4}


def test_a_replica_back_on_another_url_is_forgotten() -> None:
    index = PrefixIndex()
    hashes = block_hashes("r" * 256, 64, 100)
    index.check_url(0, "http://a")
    index.insert(0, hashes, capacity=10)
    index.insert(1, hashes, capacity=10)
    index.check_url(0, "http://a")
    assert index.matches(hashes) == {0: 4, 1: 4}
    index.check_url(0, "http://b")
    assert index.matches(hashes) == {1: 4}
    assert len(index) == 4


def test_bisected_matches_equal_a_block_by_block_walk() -> None:
    rng = random.Random(0)
    index = PrefixIndex()
    heads = ["".join(rng.choice("abc") for _ in range(6)) for _ in range(12)]
    for _ in range(600):
        text = rng.choice(heads) * 40 + "".join(rng.choice("xyz") for _ in range(rng.randrange(0, 400)))
        index.insert(rng.randrange(6), block_hashes(text, 16, 64), capacity=rng.choice((40, 200)))
    for _ in range(300):
        text = rng.choice(heads) * 40 + "".join(rng.choice("xyz") for _ in range(rng.randrange(0, 400)))
        hashes = block_hashes(text, 16, 64)
        walked = {}
        for replica in range(6):
            depth = 0
            bit = index._slots.held_bit(replica)
            while depth < len(hashes) and index._holders.get(hashes[depth], 0) & bit:
                depth += 1
            if depth:
                walked[replica] = depth
        assert index.matches(hashes) == walked
