"""modelyard/gateway/admission.py: a bounded, prioritized queue in front of a model's replicas."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.gateway.admission import AdmissionQueue, QueueRejection, Slot


def _at_once(queue: AdmissionQueue, priority: str = "interactive") -> Slot | QueueRejection:
    """acquire() run for one step only: it must answer without ever suspending."""
    coro = queue.acquire(priority)
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    result: Slot | QueueRejection = done.value.value
    return result


def test_full_queue_rejects_at_once() -> None:
    async def body() -> None:
        queue = AdmissionQueue("m", max_concurrency=1, max_queue=2, max_wait_s=3600)
        held = _at_once(queue)
        assert isinstance(held, Slot)
        waiters = [asyncio.create_task(queue.acquire("interactive")) for _ in range(2)]
        await asyncio.sleep(0)
        assert queue.waiting == 2
        rejected = _at_once(queue, "interactive")
        assert isinstance(rejected, QueueRejection)
        assert rejected.status == 503 and rejected.code == "queue_full" and rejected.retry_after_s >= 1
        held.release()
        first = await waiters[0]
        assert isinstance(first, Slot)
        first.release()
        second = await waiters[1]
        assert isinstance(second, Slot)
        second.release()
        assert queue.active == 0
    asyncio.run(body())


def test_expected_wait_beyond_bound_rejects_at_once() -> None:
    async def body() -> None:
        queue = AdmissionQueue("m", max_concurrency=2, max_queue=100, max_wait_s=10, initial_service_s=4.0)
        slots = [_at_once(queue), _at_once(queue)]
        waiters = [asyncio.create_task(queue.acquire()) for _ in range(4)]  # waits of 4s, 4s, 8s, 8s
        await asyncio.sleep(0)
        rejected = _at_once(queue)  # would wait 12s
        assert isinstance(rejected, QueueRejection) and rejected.code == "queue_wait_too_long"
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        for slot in slots:
            assert isinstance(slot, Slot)
            slot.release()
    asyncio.run(body())


def test_interactive_is_served_before_batch() -> None:
    async def body() -> None:
        queue = AdmissionQueue("m", max_concurrency=1, max_queue=10, max_wait_s=3600)
        held = _at_once(queue)
        assert isinstance(held, Slot)
        order: list[str] = []

        async def request(name: str, priority: str) -> None:
            slot = await queue.acquire(priority)
            assert isinstance(slot, Slot)
            order.append(name)
            await asyncio.sleep(0)
            slot.release()

        tasks = [asyncio.create_task(request("batch-1", "batch")), asyncio.create_task(request("batch-2", "batch"))]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(request("interactive", "interactive")))
        await asyncio.sleep(0)
        held.release()
        await asyncio.gather(*tasks)
        assert order == ["interactive", "batch-1", "batch-2"]
    asyncio.run(body())


def test_interactive_displaces_the_newest_batch_waiter_when_full() -> None:
    async def body() -> None:
        queue = AdmissionQueue("m", max_concurrency=1, max_queue=2, max_wait_s=3600)
        held = _at_once(queue)
        assert isinstance(held, Slot)
        batch = [asyncio.create_task(queue.acquire("batch")) for _ in range(2)]
        await asyncio.sleep(0)
        interactive = asyncio.create_task(queue.acquire("interactive"))
        await asyncio.sleep(0)
        displaced = await batch[1]
        assert isinstance(displaced, QueueRejection) and displaced.code == "queue_full"
        assert isinstance(_at_once(queue, "batch"), QueueRejection)  # still full for batch
        held.release()
        slot = await interactive
        assert isinstance(slot, Slot)
        slot.release()
        last = await batch[0]
        assert isinstance(last, Slot)
        last.release()
    asyncio.run(body())


def test_cancelled_waiter_gives_its_place_up() -> None:
    async def body() -> None:
        queue = AdmissionQueue("m", max_concurrency=1, max_queue=1, max_wait_s=3600)
        held = _at_once(queue)
        assert isinstance(held, Slot)
        gone = asyncio.create_task(queue.acquire())
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert queue.waiting == 0
        waiter = asyncio.create_task(queue.acquire())
        await asyncio.sleep(0)
        held.release()
        slot = await waiter
        assert isinstance(slot, Slot) and queue.active == 1
        slot.release()
        slot.release()  # a second release changes nothing
        assert queue.active == 0
    asyncio.run(body())


def test_no_capacity_rejects_and_capacity_change_wakes_waiters() -> None:
    async def body() -> None:
        queue = AdmissionQueue("m", max_concurrency=0, max_queue=5, max_wait_s=5)
        rejected = _at_once(queue)
        assert isinstance(rejected, QueueRejection) and rejected.retry_after_s == 5
        queue.set_capacity(1)
        slot = _at_once(queue)
        assert isinstance(slot, Slot)
        waiter = asyncio.create_task(queue.acquire())
        await asyncio.sleep(0)
        queue.set_capacity(2)
        second = await waiter
        assert isinstance(second, Slot) and queue.active == 2
    asyncio.run(body())


def test_invalid_bounds() -> None:
    with pytest.raises(ValueError):
        AdmissionQueue("m", max_concurrency=1, max_queue=1, max_wait_s=0)
