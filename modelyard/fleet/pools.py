"""The model pool's policy: which members of a pool are resident, as a pure function of what is observed.

A pool has a capacity: `slots` (members resident at once, each counting 1) or `memory_gib` (the sum of the
resident members' `size`). A member is one model with one replica. It *holds* capacity while it is resident
(awake, starting or waking) and while it is draining (its memory is freed only once it is asleep or stopped);
an asleep or stopped member holds none.

`plan(pool, members, now)` returns the actions that move the pool towards the state it wants, in the order the
supervisor should carry them out. An eviction and the wake it makes room for are never in one plan: the evicted
member drains, and holds its room until it is asleep or stopped; a later plan, which sees the room free, wakes
the claimant (so the members resident never exceed the capacity, not even during a swap). It reads no clock and
does no I/O: `now` is passed in, on the same monotonic clock as the members' timestamps.

Rules:

1. Claimants. A member that is asleep or stopped claims a place if it is pinned (the member's flag or the
   pool's `pinned`), or if it has demand (`queued > 0` or `in_flight > 0`). A member that is starting, waking
   or draining is left alone this round.
2. Order. Pinned claimants come first, then the others; within each group first come, first served
   (`waiting_since`, so the room made for a member goes to it and not to one that started waiting later), then
   `queued` descending, then `last_used_at` ascending, then name, so the plan is deterministic.
3. Admission. A claimant that fits in the free capacity is woken (asleep -> "wake") or started
   (stopped -> "start"). Otherwise, if it fits once the draining members have freed their room (room on its
   way, taken by the claimants in order), it waits for that room: no action. Otherwise members are evicted to
   make room for it, as many as the room free and on its way leaves short. Eviction candidates are awake
   (not starting, waking or draining), not pinned, idle (`in_flight == 0` and `queued == 0`) and resident
   for at least `min_awake_s` (`now - resident_since`), so that a member just woken is not put straight back
   to sleep. The least recently used (smallest `last_used_at`, then name) are taken first, and only as many as
   needed: a candidate taken early whose room turns out not to be needed is kept. An eviction is "sleep" if
   the member `can_sleep`, else "stop". If all candidates together do not make room, nothing is done for that
   claimant this round (it keeps waiting; a member with requests in flight is never evicted), and the next
   claimant is considered. If the plan evicts anyone, it returns only the evictions: a claimant that fits now
   is woken by the next plan, with the one that waits for the evicted members' room once they are asleep or
   stopped.
4. Too large. A claimant larger than the whole capacity is never woken, and no action mentions it (the loader
   rejects such specs).
5. Nothing else. Without claimants there is nothing to do: idle members stay awake (waking
   costs), they are only evicted to make room.

Capacity is never exceeded by what the plan adds: after the actions, the held size is at most the capacity
(or, if it was over already, at most what it was). The plan settles: applied again and again on the state its
actions produce (at the same `now`, the evicted members asleep or stopped), it comes to []; while the evicted
members still drain it evicts no one else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelyard.spec.scaling import PoolSpec

_RESIDENT = frozenset({"awake", "starting", "waking"})
_HOLDING = _RESIDENT | {"draining"}  # states in which a member's memory is taken
_DORMANT = frozenset({"asleep", "stopped"})
_STATES = _HOLDING | _DORMANT
_EPS = 1e-9  # memory sizes are floats: 0.1 + 0.2 GiB fits in 0.3 GiB


@dataclass(frozen=True)
class Member:
    name: str
    state: str  # "awake" | "starting" | "waking" | "asleep" | "stopped" | "draining"
    in_flight: int  # requests at it now
    queued: int  # requests waiting for it (held in the gateway while it is not awake)
    last_used_at: float  # when it last had a request (monotonic seconds); -inf never
    resident_since: float  # when it last became resident (woken/started); -inf if not resident
    size: float = 1.0  # 1 for a slots pool; its memory_gib for a memory pool
    pinned: bool = False
    can_sleep: bool = True  # False: it is stopped instead (llama.cpp), and started again to wake
    waiting_since: float = math.inf  # since when requests have been waiting for it (inf: none wait)


@dataclass(frozen=True)
class Action:
    member: str
    # "wake" (asleep -> awake), "start" (stopped -> starting), "sleep" (awake -> asleep), "stop" (awake -> stopped)
    kind: str
    reason: str  # a sentence for the events and the status screen: "2 requests wait for it", "pinned", ...


def plan(pool: PoolSpec, members: Sequence[Member], now: float) -> list[Action]:
    """The actions that bring `pool` towards the residency it wants, in the order to carry them out."""
    _check(members)
    pinned = {member.name for member in members if member.pinned} | set(pool.pinned)
    sizes = {member.name: _size(pool, member) for member in members}
    evictable = [member for member in members if _evictable(pool, member, pinned, now)]
    evictable.sort(key=lambda member: (member.last_used_at, member.name))
    room = _Room(
        now=now,
        capacity=_capacity(pool),
        sizes=sizes,
        free=_capacity(pool) - sum(sizes[m.name] for m in members if m.state in _HOLDING),
        coming=sum(sizes[m.name] for m in members if m.state == "draining"),
        evictable=evictable,
    )
    for member, reason in _claimants(members, pinned):
        room.admit(member, reason)
    return room.evictions or room.admissions


@dataclass
class _Room:
    """The working state of one `plan` call: capacity taken and the eviction candidates left."""

    now: float
    capacity: float
    sizes: dict[str, float]
    free: float  # capacity not held now (negative if the pool is over it)
    coming: float  # held by draining members, not yet promised to a claimant: free once they are asleep/stopped
    evictable: list[Member]  # least recently used first
    admissions: list[Action] = field(default_factory=list)
    evictions: list[Action] = field(default_factory=list)

    def admit(self, member: Member, reason: str) -> None:
        size = self.sizes[member.name]
        if size > self.capacity + _EPS:
            return
        if size <= self.free + _EPS:
            self.free -= size
            self.admissions.append(Action(member.name, "wake" if member.state == "asleep" else "start", reason))
            return
        victims = _pick(self.evictable, self.sizes, size - (self.free + self.coming))
        if victims is None:
            return
        for victim in victims:  # none when the room on its way is enough: the claimant waits for it
            self._evict(victim, f"to make room for {member.name}")
        # the room free now and on its way (the victims' included) is promised to this claimant, free room first
        self.coming -= size - max(self.free, 0.0)
        self.free = min(self.free, 0.0)

    def _evict(self, victim: Member, why: str) -> None:
        self.evictable.remove(victim)
        self.coming += self.sizes[victim.name]  # it drains first: its room is on its way, not free
        kind = "sleep" if victim.can_sleep else "stop"
        self.evictions.append(
            Action(victim.name, kind, f"least recently used idle member ({self._idle(victim)}), {why}")
        )

    def _idle(self, member: Member) -> str:
        if member.last_used_at == -math.inf:
            return "never used"
        return f"idle {self.now - member.last_used_at:.0f} s"


def _pick(candidates: Sequence[Member], sizes: dict[str, float], need: float) -> list[Member] | None:
    """The fewest of `candidates`, least recently used first, whose sizes sum to `need`; None if all fall short."""
    picked: list[Member] = []
    freed = 0.0
    for candidate in candidates:
        if freed >= need - _EPS:
            break
        picked.append(candidate)
        freed += sizes[candidate.name]
    if freed < need - _EPS:
        return None
    for candidate in reversed(picked):  # most recently used first, so the least recently used stay picked
        if freed - sizes[candidate.name] >= need - _EPS:
            picked.remove(candidate)
            freed -= sizes[candidate.name]
    return picked


def _claimants(members: Sequence[Member], pinned: set[str]) -> list[tuple[Member, str]]:
    wanting = [m for m in members if m.state in _DORMANT and (m.name in pinned or _busy(m))]
    wanting.sort(key=lambda m: (m.name not in pinned, m.waiting_since, -m.queued, m.last_used_at, m.name))
    return [(member, _claim_reason(member, member.name in pinned)) for member in wanting]


def _claim_reason(member: Member, pinned: bool) -> str:
    if member.queued > 0:
        demand = f"{_requests(member.queued)} wait for it"
    elif member.in_flight > 0:
        demand = f"{_requests(member.in_flight)} in flight at it"
    else:
        return "pinned"
    return f"pinned; {demand}" if pinned else demand


def _requests(count: int) -> str:
    return f"{count} request" if count == 1 else f"{count} requests"


def _evictable(pool: PoolSpec, member: Member, pinned: set[str], now: float) -> bool:
    return (
        member.state == "awake"
        and member.name not in pinned
        and not _busy(member)
        and now - member.resident_since >= pool.min_awake_s
    )


def _busy(member: Member) -> bool:
    return member.queued > 0 or member.in_flight > 0


def _size(pool: PoolSpec, member: Member) -> float:
    return 1.0 if pool.slots is not None else member.size


def _capacity(pool: PoolSpec) -> float:
    if pool.slots is not None:
        return float(pool.slots)
    assert pool.memory_gib is not None  # PoolSpec requires exactly one of the two
    return pool.memory_gib


def _check(members: Sequence[Member]) -> None:
    seen: set[str] = set()
    for member in members:
        if member.state not in _STATES:
            raise ValueError(f"member {member.name}: unknown state {member.state!r}")
        if member.name in seen:
            raise ValueError(f"member {member.name}: given twice")
        seen.add(member.name)
