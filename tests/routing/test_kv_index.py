from __future__ import annotations

import tracemalloc

from modelyard.routing.kv_index import BYTES_PER_BLOCK, KVIndex


def test_stored_removed_and_cleared_blocks() -> None:
    index = KVIndex(max_blocks=100)
    index.stored(0, [1, 2, 3, 4], block_size=16)
    index.stored(1, [1, 2])
    assert index.matches([1, 2, 3, 4, 5]) == {0: 4, 1: 2}
    index.removed(0, [3, 4, 99])
    assert index.matches([1, 2, 3]) == {0: 2, 1: 2}
    index.clear(1)
    assert index.matches([1, 2]) == {0: 2} and index.blocks(1) == 0
    assert index.matches([7, 1]) == {} and index.matches([]) == {}
    assert index.block_sizes == {0: 16}


def test_a_hole_in_the_chain_ends_the_held_prefix() -> None:
    index = KVIndex(max_blocks=100)
    index.stored(2, [1, 3, 4])  # block 2 is not held: 3 and 4 cannot be used
    assert index.matches([1, 2, 3, 4]) == {2: 1}


def test_past_its_bound_a_replica_forgets_its_oldest_blocks() -> None:
    index = KVIndex(max_blocks=3)
    index.stored(0, [1, 2, 3])
    index.stored(0, [1])  # stored again: now the newest
    index.stored(0, [4, 5])
    assert index.blocks(0) == 3 and [index.holds(0, k) for k in (1, 2, 3, 4, 5)] == [True, False, False, True, True]
    index.stored(1, range(1000))
    assert len(index) <= 6


def test_bytes_per_block_stay_within_the_reported_figure() -> None:
    index = KVIndex(max_blocks=1_000_000)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for replica in range(4):
        index.stored(replica, range(2**62 + replica * 50_000, 2**62 + replica * 50_000 + 50_000))
    used = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert used / len(index) <= BYTES_PER_BLOCK


def test_replica_numbers_that_only_grow_keep_the_masks_as_narrow_as_the_replicas_holding_blocks() -> None:
    index = KVIndex(max_blocks=100)
    index.stored(0, [1, 2])
    for replica in range(1, 5000):  # pods come and go (gateway/discovery.py numbers each one anew)
        index.stored(replica, [1, 2, 3])
        assert index.matches([1, 2, 3]) == {0: 2, replica: 3}
        index.clear(replica)
    index.stored(7000, [1])
    index.stored(9000, [1, 2, 3])
    assert index.matches([1, 2, 3]) == {0: 2, 7000: 1, 9000: 3}
    assert max(index._holders.values()).bit_length() <= 3  # three replicas hold blocks: three bits
    index.removed(9000, [1, 2, 3])
    index.clear(9000)
    index.stored(9001, [2])
    assert index.matches([1, 2]) == {0: 2, 7000: 1} and index.matches([2]) == {0: 1, 9001: 1}
