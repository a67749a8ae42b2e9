"""An approximate, bounded index of which replica recently served which prompt prefixes.

A prompt is a hash chain over fixed-size blocks of its text (contracts.block_hashes): block i's hash stands for
the whole prefix up to the end of block i, so "replica r holds block i" means "r served this prefix". Each
replica has an LRU of block hashes with a capacity in blocks (like its KV cache): inserting past the capacity
evicts the least recently used blocks, so the index never holds more than the sum of the capacities, whatever
the traffic (production-stack's unbounded trie is what not to do). A reverse map from block hash to a bitmask of
replicas makes a lookup walk the request's chain once, for all replicas together, stopping at the first block
that nobody holds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from modelyard.routing.slots import Slots


class PrefixIndex:
    def __init__(self) -> None:
        self._lru: dict[int, OrderedDict[int, None]] = {}  # replica -> block hashes, least recently used first
        self._holders: dict[int, int] = {}  # block hash -> bitmask of replicas that hold it
        self._slots = Slots()  # each replica's bit in the masks, while it holds blocks
        self._urls: dict[int, str] = {}  # replica -> the URL its entries were learnt from

    def __len__(self) -> int:
        """Entries over all replicas (what the memory is proportional to)."""
        return sum(len(lru) for lru in self._lru.values())

    def blocks(self, replica: int) -> int:
        return len(self._lru.get(replica, ()))

    def sizes(self) -> dict[int, int]:
        """Replica -> blocks held, for the replicas that hold any."""
        return {replica: len(lru) for replica, lru in self._lru.items() if lru}

    @property
    def distinct_blocks(self) -> int:
        return len(self._holders)

    def matches(self, hashes: Sequence[int]) -> dict[int, int]:
        """Replica -> how many leading blocks of the chain it holds (replicas holding none are left out).

        What a replica holds of a chain is always a head of it (a block is touched whenever a later one is, and
        after it, so it is evicted after it): the set of holders only shrinks along the chain, and the depths are
        found by bisecting between blocks whose holders differ, a few lookups instead of one per block.
        """
        out: dict[int, int] = {}
        if not hashes:
            return out
        holders = self._holders
        first = holders.get(hashes[0], 0)
        if not first:
            return out
        last = len(hashes) - 1
        self._split(hashes, 0, first, last, holders.get(hashes[last], 0) & first, out)
        return out

    def _split(self, hashes: Sequence[int], lo: int, lo_mask: int, hi: int, hi_mask: int,
               out: dict[int, int]) -> None:
        """Holders of block lo are lo_mask, of block hi hi_mask: the replicas in lo_mask but not in hi_mask hold a
        head that ends between lo and hi."""
        if lo_mask == hi_mask:  # nobody's head ends between lo and hi
            if hi == len(hashes) - 1:
                self._slots.record(hi_mask, hi + 1, out)
            return
        if hi == lo + 1:
            self._slots.record(lo_mask & ~hi_mask, lo + 1, out)
            if hi == len(hashes) - 1:
                self._slots.record(hi_mask, hi + 1, out)
            return
        mid = (lo + hi) // 2
        mid_mask = self._holders.get(hashes[mid], 0) & lo_mask
        self._split(hashes, lo, lo_mask, mid, mid_mask, out)
        self._split(hashes, mid, mid_mask, hi, hi_mask & mid_mask, out)

    def check_url(self, replica: int, url: str) -> None:
        """A replica that came back on another URL (a restart) starts with an empty cache: forget what it held."""
        known = self._urls.get(replica)
        if known != url:
            if known is not None:
                self.forget(replica)
            self._urls[replica] = url

    def insert(self, replica: int, hashes: Sequence[int], capacity: int) -> None:
        """Marks the chain as recently served by the replica; its head ends up most recent, so evicted last."""
        lru = self._lru.get(replica)
        if lru is None:
            lru = self._lru[replica] = OrderedDict()
        bit = self._slots.bit(replica)
        holders = self._holders
        for block in reversed(hashes):
            if block in lru:
                lru.move_to_end(block)
            else:
                lru[block] = None
                holders[block] = holders.get(block, 0) | bit
        if len(lru) > capacity:
            self._evict(lru, bit, len(lru) - capacity)

    def _evict(self, lru: OrderedDict[int, None], bit: int, count: int) -> None:
        holders = self._holders
        for _ in range(count):
            block, _ = lru.popitem(last=False)
            left = holders[block] & ~bit
            if left:
                holders[block] = left
            else:
                del holders[block]

    def forget(self, replica: int) -> None:
        lru = self._lru.pop(replica, None)
        if lru:
            self._evict(lru, self._slots.held_bit(replica), len(lru))
        self._slots.free(replica)
        self._urls.pop(replica, None)
