from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import msgspec

from modelyard.fleet.process import free_port
from modelyard.routing.endpoints import Endpoint, ReplicaState
from modelyard.routing.kv_events import KVEventFeed, allowed, apply
from modelyard.routing.kv_index import KVIndex
from modelyard.simulator.kv_events import KVEventsConfig, Publisher
from modelyard.simulator.kvcache import CacheEvent


def endpoint(replica: int, config: KVEventsConfig, url: str = "http://127.0.0.1:1") -> Endpoint:
    return Endpoint(model="m", replica=replica, url=url, state=ReplicaState.READY, kv_events=config.endpoint,
                    kv_replay=config.replay_endpoint, kv_topic=config.topic)


def config() -> KVEventsConfig:
    return KVEventsConfig(f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", topic="t")


@contextlib.asynccontextmanager
async def published() -> AsyncIterator[tuple[KVEventsConfig, Publisher, KVIndex, KVEventFeed]]:
    """A replica's publisher and a feed into a new index, both closed after."""
    cfg = config()
    publisher = Publisher(cfg, block_size=16)
    publisher.start()
    index = KVIndex(1000)
    feed = KVEventFeed(index)
    try:
        yield cfg, publisher, index, feed
    finally:
        await feed.close()
        await publisher.close()


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def unsent(publisher: Publisher, events: list[CacheEvent]) -> None:
    """A batch the publisher numbered and buffered but that never reached the subscriber (as past a HWM)."""
    send = publisher._pub.send_multipart
    publisher._pub.send_multipart = lambda *a, **k: None  # type: ignore[method-assign,assignment,return-value]
    try:
        publisher.publish(events)
    finally:
        publisher._pub.send_multipart = send  # type: ignore[method-assign]


async def joined(publisher: Publisher, index: KVIndex, replica: int) -> None:
    """Batches until one reaches the subscriber (a SUB socket only gets what is sent after it joined)."""
    for n in range(1000):
        publisher.publish([("stored", [10_000 + n], None, [])])
        await asyncio.sleep(0.01)
        if index.blocks(replica):
            index.clear(replica)
            return
    raise AssertionError("the subscriber never joined")


async def _the_index_follows_stored_removed_and_cleared_and_recovers_a_gap() -> None:
    async with published() as (cfg, publisher, index, feed):
        feed.sync([endpoint(0, cfg)])
        await joined(publisher, index, 0)
        publisher.publish([("stored", [1, 2, 3], None, list(range(48)))])
        await until(lambda: index.matches([1, 2, 3]) == {0: 3}, "stored blocks")
        assert index.block_sizes[0] == 16
        publisher.publish([("removed", [3])])
        await until(lambda: index.matches([1, 2, 3]) == {0: 2}, "a removed block")
        unsent(publisher, [("stored", [3, 4], 2, [])])  # lost on the way: asked again of the replay socket
        unsent(publisher, [("removed", [1])])
        publisher.publish([("stored", [9], None, [])])
        await until(lambda: index.holds(0, 9), "the batch after the gap")
        assert index.holds(0, 4) and not index.holds(0, 1) and feed.subscriptions[0].gaps == 1
        publisher.publish([("cleared",)])
        await until(lambda: index.blocks(0) == 0, "all blocks cleared")


async def _a_gap_that_replay_cannot_fill_forgets_the_replica() -> None:
    cfg = KVEventsConfig(f"tcp://127.0.0.1:{free_port()}", None, topic="t")  # no replay socket
    publisher = Publisher(cfg, block_size=16)
    index = KVIndex(1000)
    feed = KVEventFeed(index)
    try:
        feed.sync([endpoint(0, cfg)])
        await joined(publisher, index, 0)
        publisher.publish([("stored", [1, 2], None, [])])
        await until(lambda: index.holds(0, 1) and index.holds(0, 2), "stored blocks")
        unsent(publisher, [("removed", [2])])
        publisher.publish([("stored", [7], None, [])])
        await until(lambda: index.holds(0, 7), "the batch after the gap")
        assert not index.holds(0, 1)  # what it held before the gap is not trusted
    finally:
        await feed.close()
        await publisher.close()


async def _a_restarted_replica_starts_empty() -> None:
    first, second = config(), config()
    publisher = Publisher(first, block_size=16)
    index = KVIndex(1000)
    feed = KVEventFeed(index)
    try:
        feed.sync([endpoint(0, first)])
        await joined(publisher, index, 0)
        publisher.publish([("stored", [1, 2], None, [])])
        await until(lambda: index.holds(0, 1) and index.holds(0, 2), "stored blocks")
        feed.sync([endpoint(0, second, url="http://127.0.0.1:2")])  # restarted: new port, new event sockets
        assert index.blocks(0) == 0 and feed.subscriptions[0].source.events == second.endpoint
        feed.sync([])
        assert feed.subscriptions == {}
    finally:
        await feed.close()
        await publisher.close()


async def _joining_late_learns_what_the_replay_buffer_still_has() -> None:
    async with published() as (cfg, publisher, index, feed):
        publisher.publish([("stored", [1, 2, 3], None, [])])
        publisher.publish([("removed", [3])])
        new = feed.sync([endpoint(0, cfg)])
        await asyncio.wait_for(new[0].joined.wait(), 5)
        assert index.matches([1, 2, 3]) == {0: 2} and new[0].joined_upto == 1
        publisher.publish([("stored", [3], 2, [])])  # the next live batch follows on
        await until(lambda: index.matches([1, 2, 3]) == {0: 3}, "a live batch after the join")


def test_joining_late_learns_what_the_replay_buffer_still_has() -> None:
    asyncio.run(_joining_late_learns_what_the_replay_buffer_still_has())


def test_only_loopback_or_private_addresses_are_subscribed_to() -> None:
    assert allowed("tcp://127.0.0.1:5557") and allowed("tcp://10.1.2.3:5557") and allowed("tcp://[::1]:5557")
    assert allowed("tcp://localhost:5557") and allowed("ipc:///tmp/kv.sock")
    assert allowed("tcp://100.64.12.7:5557")  # a pod network in the shared address space (RFC 6598)
    assert not allowed("tcp://8.8.8.8:5557") and not allowed("tcp://example.com:5557")
    assert not allowed("tcp://100.128.0.1:5557")  # just past it: public
    assert not allowed("tcp://*:5557") and not allowed("pgm://x")
    feed = KVEventFeed(KVIndex(10))
    feed.sync([endpoint(0, KVEventsConfig("tcp://8.8.8.8:5557"))])
    assert feed.subscriptions == {}


def test_both_of_vllms_layouts_decode() -> None:
    index = KVIndex(100)
    as_maps = msgspec.msgpack.encode({"ts": 1.0, "events": [
        {"type": "BlockStored", "block_hashes": [1, (2).to_bytes(32, "big")], "parent_block_hash": None,
         "token_ids": [], "block_size": 16, "lora_id": None, "medium": "GPU"}]})
    apply(index, 0, as_maps)
    as_arrays = msgspec.msgpack.encode([1.0, [["BlockStored", [5], None, [], 16, None, None],
                                              ["BlockStored", [6], None, [], 16, None, "CPU"],
                                              ["BlockRemoved", [1], "GPU"]]])
    apply(index, 0, as_arrays)
    assert [index.holds(0, k) for k in (1, 2, 5, 6)] == [False, True, True, False]


def test_the_index_follows_stored_removed_and_cleared_and_recovers_a_gap() -> None:
    asyncio.run(_the_index_follows_stored_removed_and_cleared_and_recovers_a_gap())


def test_a_gap_that_replay_cannot_fill_forgets_the_replica() -> None:
    asyncio.run(_a_gap_that_replay_cannot_fill_forgets_the_replica())


def test_a_restarted_replica_starts_empty() -> None:
    asyncio.run(_a_restarted_replica_starts_empty())


async def _a_dropped_feed_lets_its_subscriptions_end() -> None:
    import gc

    from modelyard.routing import kv_events

    cfg = config()
    feed = KVEventFeed(KVIndex(10))
    kv_events.OWNER_CHECK_MS = 50  # type: ignore[misc]
    try:
        subscription = feed.sync([endpoint(0, cfg)])[0]
        await asyncio.wait_for(subscription.joined.wait(), 5)
        del feed
        gc.collect()
        await asyncio.wait_for(subscription.task, 5)
    finally:
        kv_events.OWNER_CHECK_MS = 2000  # type: ignore[misc]


def test_a_dropped_feed_lets_its_subscriptions_end() -> None:
    asyncio.run(_a_dropped_feed_lets_its_subscriptions_end())


async def _a_new_epoch_at_the_same_addresses_forgets_the_replica_and_subscribes_again() -> None:
    async with published() as (cfg, publisher, index, feed):
        first = endpoint(0, cfg)
        (subscription,) = feed.sync([first])
        await joined(publisher, index, 0)
        publisher.publish([("stored", [1, 2], None, [])])
        await until(lambda: index.blocks(0) == 2, "the blocks stored")
        first.kv_epoch += 1  # gateway/discovery.py: the pod was seen not ready, its container may have restarted
        assert feed.sync([first]) and feed.subscriptions[0] is not subscription
        assert index.blocks(0) == 0
        assert feed.sync([first]) == []  # the same epoch again: nothing new


def test_a_new_epoch_at_the_same_addresses_forgets_the_replica_and_subscribes_again() -> None:
    asyncio.run(_a_new_epoch_at_the_same_addresses_forgets_the_replica_and_subscribes_again())
