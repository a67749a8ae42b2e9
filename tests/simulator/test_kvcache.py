from __future__ import annotations

from modelyard.simulator.kvcache import PrefixCache, block_hashes


def test_hash_chain_depends_on_everything_before() -> None:
    a = block_hashes(list(range(40)), 16)
    b = block_hashes([99, *range(1, 40)], 16)
    assert len(a) == 2  # only full blocks
    assert a[0] != b[0] and a[1] != b[1]  # a change in block 0 changes every later hash
    assert block_hashes(list(range(40)), 16) == a
    assert block_hashes(list(range(32)), 16) == a


def test_released_blocks_stay_cached_and_hit() -> None:
    cache = PrefixCache(10)
    chain = block_hashes(list(range(64)), 16)
    assert cache.hit_blocks(chain, 4) == 0
    assert cache.allocate(chain, 1)
    assert cache.used == 5
    cache.release(chain, 1)
    assert cache.used == 0 and cache.cached == 4
    assert cache.hit_blocks(chain, 4) == 4
    assert cache.hit_blocks(chain, 2) == 2


def test_eviction_at_capacity_takes_least_recently_released_first() -> None:
    cache = PrefixCache(4)
    first = block_hashes(list(range(32)), 16)
    second = block_hashes(list(range(100, 132)), 16)
    third = block_hashes(list(range(200, 232)), 16)
    for chain in (first, second):
        assert cache.allocate(chain, 0)
        cache.release(chain, 0)
    assert cache.cached == 4
    assert cache.allocate(third, 0)
    assert cache.evictions == 2
    assert cache.hit_blocks(first, 2) == 0  # the oldest went
    assert cache.hit_blocks(second, 2) == 2


def test_blocks_held_by_running_requests_are_never_evicted() -> None:
    cache = PrefixCache(4)
    held = block_hashes(list(range(48)), 16)
    assert cache.allocate(held, 0)
    other = block_hashes(list(range(100, 132)), 16)
    assert not cache.allocate(other, 0)  # 3 held + 2 needed > 4: refused, nothing changed
    assert cache.used == 3 and cache.evictions == 0
    assert cache.allocate(other[:1], 0)
    assert cache.used == 4 and cache.usage() == 1.0


def test_a_hit_is_not_evicted_to_make_room_for_its_own_request() -> None:
    cache = PrefixCache(3)
    shared = block_hashes(list(range(32)), 16)
    assert cache.allocate(shared, 0)
    cache.release(shared, 0)
    longer = block_hashes(list(range(48)), 16)
    assert cache.allocate(longer, 0)  # 2 hits + 1 new block fit exactly
    assert cache.evictions == 0 and cache.used == 3


def test_reset_drops_only_idle_blocks() -> None:
    cache = PrefixCache(8)
    a, b = block_hashes(list(range(32)), 16), block_hashes(list(range(50, 82)), 16)
    cache.allocate(a, 0)
    cache.allocate(b, 0)
    cache.release(a, 0)
    cache.reset()
    assert cache.cached == 2 and cache.hit_blocks(b, 2) == 2 and cache.hit_blocks(a, 2) == 0
