"""The indexes' replica bits (routing/slots.py): replica numbers only grow, the masks do not."""

from __future__ import annotations

from modelyard.routing.kv_index import KVIndex
from modelyard.routing.prefix_index import PrefixIndex
from modelyard.routing.slots import Slots


def test_a_freed_bit_is_taken_by_the_next_replica_so_masks_stay_as_wide_as_the_replicas_holding_blocks() -> None:
    slots = Slots()
    assert [slots.bit(r) for r in (5, 900, 7)] == [1, 2, 4]
    assert slots.bit(900) == 2 and slots.held_bit(11) == 0
    slots.free(900)
    assert slots.held_bit(900) == 0 and slots.bit(12345) == 2  # the lowest free bit
    out: dict[int, int] = {}
    slots.record(1 | 2 | 4, 3, out)
    assert out == {5: 3, 12345: 3, 7: 3} and len(slots) == 3


def test_both_indexes_keep_narrow_masks_and_right_answers_through_replica_churn() -> None:
    chain = [11, 22, 33, 44]
    prefix, kv = PrefixIndex(), KVIndex(1000)
    for replica in range(500):  # each replica serves, then goes (a scale-down, a restart under a new number)
        prefix.insert(replica, chain[: 1 + replica % 4], capacity=100)
        kv.stored(replica, chain[: 1 + replica % 4])
        if replica >= 2:
            prefix.forget(replica - 2)
            kv.clear(replica - 2)
    assert prefix.matches(chain) == {498: 3, 499: 4} and kv.matches(chain) == {498: 3, 499: 4}
    assert len(prefix._slots) <= 3 and len(kv._slots) <= 3  # not 500 bits wide
    assert max(prefix._holders.values()).bit_length() <= 3 and max(kv._holders.values()).bit_length() <= 3
