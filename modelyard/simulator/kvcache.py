from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from modelyard import kv_hash

HASH_SEED = "0"  # what vLLM gets as PYTHONHASHSEED: the seed of every block's hash chain


def block_hashes(tokens: Sequence[int], block_size: int, seed: str = HASH_SEED) -> list[int]:
    """The hash chain of a prompt's full blocks as vLLM computes it (sha256_cbor, the 64-bit keys that its KV
    events carry): block i's hash covers every token up to the end of block i."""
    return list(kv_hash.block_keys(tokens, block_size, seed))


# what the cache did, for the KV events (simulator/kv_events.py): ("stored", hashes, parent, token ids),
# ("removed", hashes), ("cleared",)
CacheEvent = tuple[Any, ...]


class PrefixCache:
    """KV blocks: shared prompt blocks found by hash, private blocks (partial and decode), LRU eviction.

    A block that no running request holds stays cached (reusable by hash) until a new allocation needs its room;
    the least recently released goes first.
    """

    def __init__(self, capacity: int, block_size: int = 16, record: bool = False) -> None:
        self.capacity, self.block_size = capacity, block_size
        self.record = record  # keep CacheEvents in `events` (a KV-event publisher takes them)
        self.events: list[CacheEvent] = []
        self._refs: dict[int, int] = {}  # hash -> holders, for every cached block
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody holds, least recently used first
        self._private = 0
        self.evictions = 0

    @property
    def used(self) -> int:
        """Blocks held by running requests (what vLLM's kv_cache_usage_perc counts)."""
        return len(self._refs) - len(self._idle) + self._private

    @property
    def cached(self) -> int:
        return len(self._refs)

    def usage(self) -> float:
        return self.used / self.capacity

    def free(self) -> int:
        return self.capacity - len(self._refs) - self._private

    def hit_blocks(self, hashes: Sequence[int], limit: int) -> int:
        """How many leading blocks of the chain are cached, at most `limit`."""
        hits = 0
        for h in hashes[:limit]:
            if h not in self._refs:
                break
            hits += 1
        return hits

    def can_allocate(self, hashes: Sequence[int], private: int) -> bool:
        missing = sum(1 for h in hashes if h not in self._refs)
        evictable = len(self._idle) - sum(1 for h in hashes if h in self._idle)
        return missing + private <= self.free() + evictable

    def allocate(self, hashes: Sequence[int], private: int, tokens: Sequence[int] = ()) -> bool:
        """Holds the blocks of `hashes` (reusing cached ones) and `private` more; False, changing nothing, if full.
        `tokens`: the prompt's token ids, for the stored events."""
        if not self.can_allocate(hashes, private):
            return False
        for h in hashes:  # take the hits first, so that making room cannot evict them
            if h in self._refs:
                self._refs[h] += 1
                self._idle.pop(h, None)
        run: list[int] = []  # the new blocks, stored as runs of consecutive blocks (one event each, as vLLM)
        for i, h in enumerate(hashes):
            if h not in self._refs:
                self._make_room(1)
                self._refs[h] = 1
                if self.record:
                    run.append(i)
            elif run:
                self._stored(hashes, run, tokens)
                run = []
        if run:
            self._stored(hashes, run, tokens)
        self._make_room(private)
        self._private += private
        return True

    def release(self, hashes: Sequence[int], private: int) -> None:
        for h in reversed(hashes):  # a chain's tail goes idle first, so it is evicted before the shared head
            refs = self._refs.get(h, 0)
            if refs <= 0:
                continue
            self._refs[h] = refs - 1
            if refs == 1:
                self._idle[h] = None
        self._private = max(0, self._private - private)

    def reset(self) -> None:
        """Drops every cached block that no request holds (vLLM's reset_prefix_cache, done on sleep)."""
        for h in self._idle:
            del self._refs[h]
        self._idle.clear()
        if self.record:
            self.events.append(("cleared",))

    def take_events(self) -> list[CacheEvent]:
        events, self.events = self.events, []
        return events

    def _stored(self, hashes: Sequence[int], run: list[int], tokens: Sequence[int]) -> None:
        first, size = run[0], self.block_size
        parent = hashes[first - 1] if first else None
        self.events.append(("stored", [hashes[i] for i in run], parent,
                            list(tokens[first * size:(run[-1] + 1) * size])))

    def _make_room(self, blocks: int) -> None:
        for _ in range(blocks - self.free()):
            h, _none = self._idle.popitem(last=False)
            del self._refs[h]
            self.evictions += 1
            if self.record:
                if self.events and self.events[-1][0] == "removed":
                    self.events[-1][1].append(h)
                else:
                    self.events.append(("removed", [h]))
