"""Where a prompt goes when no replica holds its prefix, and when a held prefix gets a second replica (issue 17, item
3): the precise-prefix scorer's placement under capacity, apart from its scoring.

A replica's LRU cache keeps a prefix until `capacity` other blocks have been used since its last use, so what a new
prefix competes with there is not every block the engine holds (its events say the cache is always full once warm)
but the blocks still in use: those that requests were sent with in the last `horizon_s` (`WorkingSets`, the
router's own record per replica, refreshed at most every `horizon_s / 8` per chain). A replica's room is its
capacity (`vllm:cache_config_info`) less the smaller of what it holds (its events and the pending placements) and
what is in use there (times the gateway processes, each of which sees its share of the requests). A cold prompt
goes, among the replicas whose load is within `cold_slack` of the mean (in the order that rendezvous hashing of its
head gives them, the same in every process), to the one with room for it and the most room left; where none has
room, to the one whose prefixes are coldest (fewest requests in the horizon): what it evicts is used least.

A hot prefix: when every replica holding a request's prefix has been overloaded for `spill_after_s` (it carries
more than `spill_load` times the mean load, plus `spill_min` unless its engine queues) while another replica is
not, the request is placed as a cold one among the others, if one has room for it (a copy that evicts other
prompts cost more than it saved on the device machine's tenant mix: docs/benchmarks.md), and scores there as it
would where it is held: the load scorer sends it to the new copy, and the next requests of the prefix follow (the
pending index), so the prefix is served from two replicas until they are both overloaded.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from modelyard.routing.endpoints import Endpoint


class WorkingSets:
    """Per replica, the block keys that requests were sent there with in the last `horizon_s` (oldest first), and
    the times of those requests; bounded by `max_blocks` per replica."""

    def __init__(self, horizon_s: float, max_blocks: int) -> None:
        self.horizon_s, self.max_blocks = horizon_s, max_blocks
        self.refresh_s = horizon_s / 8
        self._blocks: dict[int, OrderedDict[int, float]] = {}
        self._requests: dict[int, deque[float]] = {}
        self._unique = 0  # the keys of blocks no other request shares (negative: never a real block key)

    def touched(self, replica: int, keys: Sequence[int], now: float, unique: int = 0) -> None:
        """A request sent there with these keys, and `unique` blocks of its own beyond them (the rest of a chat
        whose keys are its system head's: its own turns take room in that cache too, until LRU evicts them)."""
        blocks = self._blocks.get(replica)
        if blocks is None:
            blocks = self._blocks[replica] = OrderedDict()
            self._requests[replica] = deque()
        self._requests[replica].append(now)
        for _ in range(unique):
            self._unique -= 1
            blocks[self._unique] = now
        stamp = blocks.get(keys[-1]) if keys else now
        if stamp is None or now - stamp >= self.refresh_s:  # else the chain was in use a moment ago (its last key
            move = blocks.move_to_end                       # stands for the whole prefix)
            for key in keys:
                if key in blocks:
                    move(key)
                blocks[key] = now
        while len(blocks) > self.max_blocks:
            blocks.popitem(last=False)

    def expire(self, now: float) -> None:
        cutoff = now - self.horizon_s
        for blocks in self._blocks.values():
            while blocks:
                key, stamp = next(iter(blocks.items()))
                if stamp >= cutoff:
                    break
                blocks.popitem(last=False)
        for times in self._requests.values():
            while times and times[0] < cutoff:
                times.popleft()

    def live(self, replica: int) -> int:
        return len(self._blocks.get(replica, ()))

    def requests(self, replica: int) -> int:
        return len(self._requests.get(replica, ()))

    def clear(self, replica: int) -> None:
        self._blocks.pop(replica, None)
        self._requests.pop(replica, None)


class Placement:
    """The choices of placement under capacity for one model's replicas (see the module's docstring)."""

    ROOM_TTL_S = 0.05  # a replica's room is recomputed this often, and when the scorer sends it new blocks

    def __init__(self, working: WorkingSets, held: Callable[[int], int], clock: Callable[[], float],
                 processes: int = 1, cold_slack: float = 0.25, room: bool = True, spill_load: float = 1.5,
                 spill_min: int = 8, spill_after_s: float = 0.5) -> None:
        self.working, self.held, self.clock, self.processes = working, held, clock, max(1, processes)
        self.cold_slack, self.use_room = cold_slack, room
        self.spill_load, self.spill_min, self.spill_after_s = spill_load, spill_min, spill_after_s
        self._rooms: dict[int, tuple[float, int]] = {}  # replica -> (when, room)
        self._over_since: dict[int, float] = {}  # a prefix's head key -> since when its holders are overloaded

    def spill(self, head: int, endpoints: Sequence[Endpoint], holders: Sequence[int]) -> bool:
        """Whether the prefix gets one more replica: its holders have been overloaded for `spill_after_s` (a
        moment's burst does not copy a prefix)."""
        if not self.overloaded(endpoints, holders):
            self._over_since.pop(head, None)
            return False
        now = self.clock()
        since = self._over_since.setdefault(head, now)
        if len(self._over_since) > 4096:  # bounded: the oldest goes
            self._over_since.pop(next(iter(self._over_since)))
        return now - since >= self.spill_after_s

    def forget(self, replica: int) -> None:
        self._rooms.pop(replica, None)

    def room(self, endpoint: Endpoint) -> int:
        """Blocks its cache can take without evicting a block in use; without a known size, minus what it uses."""
        now = self.clock()
        memo = self._rooms.get(endpoint.replica)
        if memo is not None and now - memo[0] < self.ROOM_TTL_S:
            return memo[1]
        used = min(self.held(endpoint.replica), self.working.live(endpoint.replica) * self.processes)
        room = endpoint.kv_blocks - used if endpoint.kv_blocks is not None else -used
        self._rooms[endpoint.replica] = (now, room)
        return room

    def place(self, keys: Sequence[int], head: int, endpoints: Sequence[Endpoint], matched: dict[int, int],
              exclude: Sequence[int] = (), fit: bool = False) -> int | None:
        """The index of the endpoint a prompt with these keys should go to, among those with events and not in
        `exclude`; None when there is none (with `fit`: none with room for it). `matched`: replica -> leading
        blocks it holds already."""
        loads = [(i, max(e.in_flight, e.running + e.waiting + e.in_flight - e.in_flight_at_scrape))
                 for i, e in enumerate(endpoints) if e.kv_events and i not in exclude]
        if not loads:
            return None
        bound = sum(load for _, load in loads) / len(loads) * (1.0 + self.cold_slack) + 1.0
        total, use_room = len(keys), self.use_room
        best, best_key = None, (0, 0, 0)
        for i, load in loads:
            if load > bound:
                continue
            replica = endpoints[i].replica
            order = hash((head, replica))  # rendezvous hashing: the tie-break, the same in every process
            if not use_room:
                key = (1, 0, order)
            else:
                left = self.room(endpoints[i]) - (total - matched.get(replica, 0))
                key = (1, left, order) if left >= 0 else (0, -self.working.requests(replica), order)
            if best is None or key > best_key:
                best, best_key = i, key
        if fit and use_room and best is not None and best_key[0] == 0:
            return None
        return best

    def overloaded(self, endpoints: Sequence[Endpoint], holders: Sequence[int]) -> bool:
        """Whether every holder of a prefix is past what it can serve (its load over `spill_load` x the mean of the
        replicas with events, + `spill_min` unless its engine queues) while another replica is not."""
        spill_min = self.spill_min
        for i in holders:
            e = endpoints[i]
            if e.waiting_now() <= 0 and e.in_flight <= spill_min and \
                    e.running + e.waiting + e.in_flight - e.in_flight_at_scrape <= spill_min:
                return False  # the usual case, answered without the others' loads
        loads = [max(e.in_flight, e.running + e.waiting + e.in_flight - e.in_flight_at_scrape) if e.kv_events else -1
                 for e in endpoints]
        live = [load for load in loads if load >= 0]
        bound = self.spill_load * sum(live) / max(1, len(live))

        def over(i: int) -> bool:
            return loads[i] > bound + (0 if endpoints[i].waiting_now() > 0 else spill_min)

        if not all(over(i) for i in holders):
            return False
        held = set(holders)
        return any(load >= 0 and i not in held and not over(i) for i, load in enumerate(loads))
