"""Bits for replicas in the indexes' holder masks (routing/kv_index.py, routing/prefix_index.py): each replica that
holds blocks gets the lowest free bit, given back when it holds none, so the masks stay as wide as the replicas
holding blocks now, not as the highest replica number so far (numbers are never reused: they only grow)."""

from __future__ import annotations


class Slots:
    def __init__(self) -> None:
        self._slots: dict[int, int] = {}  # replica -> its slot (its bit is 1 << slot)
        self._replicas: list[int | None] = []  # slot -> its replica (None: free)

    def bit(self, replica: int) -> int:
        """The replica's bit, a free one taken if it has none."""
        slot = self._slots.get(replica)
        if slot is None:
            replicas = self._replicas
            slot = next((i for i, r in enumerate(replicas) if r is None), len(replicas))
            if slot == len(replicas):
                replicas.append(replica)
            else:
                replicas[slot] = replica
            self._slots[replica] = slot
        return 1 << slot

    def held_bit(self, replica: int) -> int:
        """The replica's bit, 0 if it has none."""
        slot = self._slots.get(replica)
        return 0 if slot is None else 1 << slot

    def free(self, replica: int) -> None:
        """No mask has the replica's bit any more: it is free for another."""
        slot = self._slots.pop(replica, None)
        if slot is not None:
            self._replicas[slot] = None

    def record(self, mask: int, depth: int, out: dict[int, int]) -> None:
        """out[replica] = depth for each replica whose bit is in `mask`."""
        replicas = self._replicas
        while mask:
            low = mask & -mask
            replica = replicas[low.bit_length() - 1]
            assert replica is not None
            out[replica] = depth
            mask ^= low

    def __len__(self) -> int:
        """The masks' width: the highest slot in use plus one (free slots below it included)."""
        return len(self._replicas)
