"""Per-model admission: at most `max_concurrency` requests at the replicas, a bounded queue in front of them.

Per request, after the key's limits admitted it::

    slot = await queues[model].acquire(key.priority)
    if isinstance(slot, QueueRejection):
        return openai_error(slot.status, slot.message, slot.code, headers={"Retry-After": str(slot.retry_after_s)})
    try:
        ...relay...
    finally:
        slot.release()

Waiters are served interactive before batch, first come first served within a priority. A request is turned
away at once (never parked to time out later) when the queue is full, or when the wait it would see, estimated
from the recent time a slot is held, is beyond `max_wait_s`. An interactive request that finds the queue full
takes the place of the newest batch waiter, which is turned away instead. A waiter still queued after
`max_wait_s` (the estimate was wrong) is turned away then. `set_capacity` follows the number of ready replicas
times their parallelism.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PRIORITY_RANK = {"interactive": 0, "batch": 1}
EWMA_ALPHA = 0.2


@dataclass(frozen=True)
class QueueRejection:
    status: int  # 503: the model is overloaded, 429 would blame the caller
    code: str  # queue_full | queue_wait_too_long | queue_timeout
    message: str
    retry_after_s: int


class Slot:
    """A place at the replicas; `release()` exactly once (further calls do nothing)."""

    def __init__(self, queue: AdmissionQueue) -> None:
        self._queue: AdmissionQueue | None = queue
        self.acquired_at = queue.clock()

    def release(self) -> None:
        queue, self._queue = self._queue, None
        if queue is not None:
            queue._release(self)


@dataclass(order=True)
class _Waiter:
    rank: int
    seq: int
    future: asyncio.Future[Slot | QueueRejection] = field(compare=False)


class AdmissionQueue:
    def __init__(self, model: str, max_concurrency: int, max_queue: int, max_wait_s: float,
                 clock: Callable[[], float] = time.monotonic, initial_service_s: float = 1.0) -> None:
        if max_concurrency < 0 or max_queue < 0 or max_wait_s <= 0:
            raise ValueError("max_concurrency and max_queue must be >= 0, max_wait_s > 0")
        self.model, self.capacity, self.max_queue, self.max_wait_s = model, max_concurrency, max_queue, max_wait_s
        self.clock = clock
        self.active = 0
        self.service_s = initial_service_s  # moving average of how long a slot is held
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._heap if not w.future.done())

    def estimated_wait_s(self, ahead: int) -> float:
        """The wait of a request with `ahead` requests before it in the queue, once every slot is busy."""
        if self.capacity <= 0:
            return math.inf
        return (ahead // self.capacity + 1) * self.service_s

    async def acquire(self, priority: str = "interactive") -> Slot | QueueRejection:
        rank = PRIORITY_RANK.get(priority, 1)
        if self.active < self.capacity and self.waiting == 0:
            return self._grant()
        rejection = self._refuse(rank)
        if rejection is not None:
            return rejection
        if len(self._heap) > 2 * self.max_queue + 16:  # drop waiters that were turned away or gave up
            self._heap = [w for w in self._heap if not w.future.done()]
            heapq.heapify(self._heap)
        waiter = _Waiter(rank, next(self._seq), asyncio.get_running_loop().create_future())
        heapq.heappush(self._heap, waiter)
        try:
            async with asyncio.timeout(self.max_wait_s):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            if waiter.future.done() and not waiter.future.cancelled():
                return waiter.future.result()
            waiter.future.cancel()
            return self._rejection("queue_timeout", f"waited {self.max_wait_s:g}s for a free replica")
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                result = waiter.future.result()
                if isinstance(result, Slot):
                    result.release()  # granted as the caller went away: hand the slot on
            waiter.future.cancel()
            raise

    def _refuse(self, rank: int) -> QueueRejection | None:
        ahead = sum(1 for w in self._heap if not w.future.done() and w.rank <= rank)
        if self.estimated_wait_s(ahead) > self.max_wait_s:
            return self._rejection("queue_wait_too_long", f"the expected wait is over {self.max_wait_s:g}s")
        if self.waiting < self.max_queue:
            return None
        victim = self._newest_of_lower_priority(rank)
        if victim is None:
            return self._rejection("queue_full", f"{self.max_queue} requests are already waiting")
        victim.future.set_result(self._rejection("queue_full", "a higher-priority request took this place"))
        return None

    def _newest_of_lower_priority(self, rank: int) -> _Waiter | None:
        candidates = [w for w in self._heap if not w.future.done() and w.rank > rank]
        return max(candidates, key=lambda w: (w.rank, w.seq)) if candidates else None

    def _rejection(self, code: str, why: str) -> QueueRejection:
        retry = self.estimated_wait_s(self.waiting)
        retry_s = max(1, math.ceil(retry if math.isfinite(retry) else self.max_wait_s))
        return QueueRejection(503, code, f"Model '{self.model}' is overloaded: {why}", retry_s)

    def _grant(self) -> Slot:
        self.active += 1
        return Slot(self)

    def _release(self, slot: Slot) -> None:
        self.active -= 1
        held = self.clock() - slot.acquired_at
        self.service_s += EWMA_ALPHA * (held - self.service_s)
        self._wake()

    def _wake(self) -> None:
        while self._heap and self.active < self.capacity:
            waiter = heapq.heappop(self._heap)
            if not waiter.future.done():
                waiter.future.set_result(self._grant())

    def set_capacity(self, max_concurrency: int) -> None:
        self.capacity = max(0, max_concurrency)
        self._wake()
