"""What each replica of one model says it holds: the block keys of its KV events (routing/kv_events.py), bounded.

Per replica, the keys it stored and has not removed, in the order they came (a dict used as an ordered set), with a
bound: past `max_blocks` (a replica that holds more than its cache could, because removals were lost) the oldest
go first. A reverse map from key to a bitmask of holders makes a lookup walk the request's chain once for all
replicas, stopping at the first block nobody holds. A replica's bit is a slot of its own while it holds blocks,
reused once it holds none: replica numbers only grow where the gateway discovers pods (a new number for each pod,
gateway/discovery.py), and a mask as wide as the largest number ever seen would cost bytes per key for every pod
that ever came and went. `AllBlocksCleared`, a gap that replay could not fill and a
replica that restarted clear that replica's share (`clear`).

Memory: about BYTES_PER_BLOCK bytes per held block and replica (tests/routing/test_kv_index.py measures it), so a
replica with a 25,000-block cache costs about 4 MB.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from modelyard.routing.slots import Slots

BYTES_PER_BLOCK = 170  # measured with tracemalloc: two dict entries and the key's int (tests check the bound)


class KVIndex:
    def __init__(self, max_blocks: int, on_clear: Callable[[int], None] | None = None) -> None:
        self.max_blocks = max_blocks
        self._held: dict[int, dict[int, None]] = {}  # replica -> its keys, oldest first
        self._holders: dict[int, int] = {}  # key -> bitmask of the replicas that hold it
        self.block_sizes: dict[int, int] = {}  # replica -> the block size its events said
        self._slots = Slots()  # each replica's bit in the masks, while it holds blocks
        self.on_clear = on_clear  # told of each replica whose share is cleared

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._held.values())

    def blocks(self, replica: int) -> int:
        return len(self._held.get(replica, ()))

    def holds(self, replica: int, key: int) -> bool:
        return key in self._held.get(replica, ())

    def stored(self, replica: int, keys: Iterable[int], block_size: int | None = None) -> None:
        held = self._held.get(replica)
        if held is None:
            held = self._held[replica] = {}
        if block_size:
            self.block_sizes[replica] = block_size
        bit = self._slots.bit(replica)
        holders = self._holders
        for key in keys:
            if key in held:
                del held[key]  # stored again: now the newest
            else:
                holders[key] = holders.get(key, 0) | bit
            held[key] = None
        over = len(held) - self.max_blocks
        if over > 0:
            self._drop(bit, [k for k, _ in zip(held, range(over), strict=False)], held)

    def removed(self, replica: int, keys: Iterable[int]) -> None:
        held = self._held.get(replica)
        if held:
            self._drop(self._slots.held_bit(replica), [k for k in keys if k in held], held)

    def clear(self, replica: int) -> None:
        held = self._held.pop(replica, None)
        if held:
            self._drop(self._slots.held_bit(replica), list(held), {})
        self._slots.free(replica)  # no mask has its bit any more
        self.block_sizes.pop(replica, None)
        if self.on_clear is not None:
            self.on_clear(replica)

    def _drop(self, bit: int, keys: list[int], held: dict[int, None]) -> None:
        holders = self._holders
        for key in keys:
            held.pop(key, None)
            left = holders.get(key, 0) & ~bit
            if left:
                holders[key] = left
            else:
                holders.pop(key, None)

    def matches(self, keys: Sequence[int]) -> dict[int, int]:
        """Replica -> how many leading blocks of the chain it holds (those holding none are left out)."""
        out: dict[int, int] = {}
        holders = self._holders
        mask = holders.get(keys[0], 0) if keys else 0
        depth = 0
        for key in keys:
            now = mask & holders.get(key, 0)
            if now != mask:
                self._slots.record(mask & ~now, depth, out)
                mask = now
                if not mask:
                    return out
            depth += 1
        self._slots.record(mask, depth, out)
        return out
