"""Feeds a model's KVIndex from its replicas' KV events: one ZMQ SUB per replica (pyzmq's asyncio API).

The format is vLLM's (vllm/distributed/kv_events.py; modelyard's simulator publishes the same): frames (topic,
sequence number as 8 big-endian bytes, msgpack KVEventBatch). The batch and its events are decoded from plain
msgpack (never pickle) in either of the layouts vLLM has used: tagged maps (`{"type": "BlockStored", ...}`) or
tagged arrays (`["BlockStored", hashes, parent, tokens, block_size, lora_id, medium]`). A hash is an int (the low 64
bits) or the digest's bytes (folded to the same 64 bits).

A gap in the sequence numbers is asked of the replay socket (a DEALER speaking to vLLM's ROUTER as a REQ would:
an empty frame, then the first sequence number missed); what it cannot give back (the publisher's buffer moved on,
or no answer in time) clears the replica's share, since removals may be among what was lost. A sequence number
that goes back means the engine restarted: its share is cleared too. Sockets connect only to loopback or private
addresses (`allowed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from modelyard.routing.endpoints import Endpoint
from modelyard.routing.kv_index import KVIndex

log = logging.getLogger(__name__)

REPLAY_TIMEOUT_S = 1.0
OWNER_CHECK_MS = 2000  # a subscription whose feed is gone (its router was replaced) ends within this
GPU_MEDIA = (None, "GPU")
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598: not routed on the internet


def allowed(address: str) -> bool:
    """tcp:// to a loopback or private IP literal (or localhost; private includes the shared address space
    100.64.0.0/10 that some pod networks use), or ipc://; nothing else is connected to."""
    if address.startswith("ipc://"):
        return True
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://"):].rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip in SHARED_ADDRESS_SPACE


def _key(value: Any) -> int:
    if isinstance(value, bytes):
        return int.from_bytes(value[-8:], "big")
    return int(value) & 0xFFFFFFFFFFFFFFFF


def _fields(event: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(event, dict):
        return str(event.get("type", "")), event
    if isinstance(event, list) and event:
        tag, rest = str(event[0]), event[1:]
        names = {"BlockStored": ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium"),
                 "BlockRemoved": ("block_hashes", "medium")}.get(tag, ())
        return tag, dict(zip(names, rest, strict=False))
    return "", {}


def apply(index: KVIndex, replica: int, payload: bytes) -> None:
    """One KVEventBatch's events, in order."""
    batch = msgspec.msgpack.decode(payload)
    events = batch.get("events") if isinstance(batch, dict) else batch[1] if isinstance(batch, list) else None
    for event in events or ():
        tag, fields = _fields(event)
        if tag == "AllBlocksCleared":
            index.clear(replica)
        elif fields.get("medium") not in GPU_MEDIA:
            continue  # blocks offloaded to CPU or disk do not make a prefill cheap enough to route for
        elif tag == "BlockStored" and fields.get("lora_id") is None:
            index.stored(replica, map(_key, fields.get("block_hashes") or ()), fields.get("block_size"))
        elif tag == "BlockRemoved":
            index.removed(replica, map(_key, fields.get("block_hashes") or ()))


@dataclass(frozen=True)
class Source:
    """A replica's event sockets as the endpoint table says (a restart gives new ones, or a new epoch)."""

    replica: int
    url: str
    events: str
    replay: str | None
    topic: str
    epoch: int = 0

    @classmethod
    def of(cls, endpoint: Endpoint) -> Source | None:
        if endpoint.kv_events is None:
            return None
        return cls(endpoint.replica, endpoint.url, endpoint.kv_events, endpoint.kv_replay, endpoint.kv_topic,
                   endpoint.kv_epoch)


class Subscription:
    def __init__(self, ctx: zmq.asyncio.Context, index: KVIndex, source: Source,
                 owner: Callable[[], object | None] = lambda: True) -> None:
        self.ctx, self.index, self.source, self.owner = ctx, index, source, owner
        self.last: int | None = None
        self.joined_upto = -1  # the last batch that the replay on joining gave
        self.joined = asyncio.Event()
        self.live = False  # a batch came through the SUB socket (before that, one may repeat the join's replay)
        self.batches = 0
        self.gaps = 0
        self.task = asyncio.create_task(self._run(), name=f"kv-events {source.events}")

    async def _run(self) -> None:
        sub = self.ctx.socket(zmq.SUB)
        try:
            sub.connect(self.source.events)
            sub.setsockopt(zmq.SUBSCRIBE, self.source.topic.encode())
            await self._join()
            while True:
                if not await sub.poll(OWNER_CHECK_MS):
                    if self.owner() is None:
                        return
                    continue
                frames = await sub.recv_multipart()
                if len(frames) != 3:
                    continue
                seq = int.from_bytes(frames[1], "big")
                if self.last is not None and seq <= self.last:
                    if not self.live and seq <= self.joined_upto:
                        continue  # already had from the replay on joining
                    self.index.clear(self.source.replica)  # numbering started again: the engine restarted
                    self.last = None
                if self.last is not None and seq > self.last + 1:
                    await self._recover(self.last + 1, seq)
                self._apply(seq, frames[2])
                self.live = True
        except asyncio.CancelledError:
            raise
        except Exception:  # a bad frame or a closed context: this replica's share is not trusted any more
            log.exception("KV events from %s stopped", self.source.events)
            self.index.clear(self.source.replica)
        finally:
            self.joined.set()
            sub.close(linger=0)

    async def _join(self) -> None:
        """What the replica published before we joined, as far as its replay buffer reaches back: the latest run
        of batches tells a subset of what it holds (blocks stored before the run are missing, never extra)."""
        try:
            got = await self._replay(0, None) if self.source.replay else []
            run: list[tuple[int, bytes]] = []
            for seq, payload in got:
                if run and seq != run[-1][0] + 1:
                    run = []
                run.append((seq, payload))
            for seq, payload in run:
                self._apply(seq, payload)
            if run:
                self.joined_upto = run[-1][0]
        finally:
            self.joined.set()

    def _apply(self, seq: int, payload: bytes) -> None:
        apply(self.index, self.source.replica, payload)
        self.last = seq
        self.batches += 1

    async def _recover(self, first: int, upto: int) -> None:
        """Batches first .. upto-1 from the replay socket; the share is cleared when they cannot all be had."""
        self.gaps += 1
        got = await self._replay(first, upto) if self.source.replay else []
        if [seq for seq, _ in got] != list(range(first, upto)):
            log.warning("KV events from %s: batches %d-%d lost, its blocks forgotten", self.source.events, first,
                        upto - 1)
            self.index.clear(self.source.replica)
            self.last = upto - 1
            return
        for seq, payload in got:
            self._apply(seq, payload)

    async def _replay(self, first: int, upto: int | None) -> list[tuple[int, bytes]]:
        """Batches from `first` (before `upto`) that the replay socket still has."""
        assert self.source.replay is not None
        dealer = self.ctx.socket(zmq.DEALER)
        got: list[tuple[int, bytes]] = []
        try:
            dealer.connect(self.source.replay)
            await dealer.send_multipart((b"", first.to_bytes(8, "big")))
            while True:
                frames = await asyncio.wait_for(dealer.recv_multipart(), REPLAY_TIMEOUT_S)
                if len(frames) != 3 or not frames[2]:
                    break  # the end marker (seq -1, empty payload)
                seq = int.from_bytes(frames[1], "big")
                if first <= seq and (upto is None or seq < upto):
                    got.append((seq, frames[2]))
        except TimeoutError:
            pass
        finally:
            dealer.close(linger=0)
        return got

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class KVEventFeed:
    """The subscriptions of one model's replicas, kept equal to the endpoint table's sources (`sync`)."""

    def __init__(self, index: KVIndex) -> None:
        self.index = index
        self.subscriptions: dict[int, Subscription] = {}
        self._stopping: set[asyncio.Task[None]] = set()  # cancelled, their sockets closing
        self._ctx: zmq.asyncio.Context | None = None
        self._refused: set[str] = set()  # addresses not subscribed to, already logged

    def sync(self, endpoints: Iterable[Endpoint]) -> list[Subscription]:
        """Subscribes to new sources (returned); a replica whose source changed (a restart) or went is unsubscribed
        and its share cleared. Runs on the event loop."""
        wanted: dict[int, Source] = {}
        for endpoint in endpoints:
            source = Source.of(endpoint)
            if source is None:
                continue
            if not allowed(source.events) or (source.replay is not None and not allowed(source.replay)):
                if source.events not in self._refused:  # said once, not at every sync
                    self._refused.add(source.events)
                    log.warning("not subscribing to %s's KV events at %s: not a loopback or private address",
                                endpoint.id, source.events)
                continue
            wanted[source.replica] = source
        for replica, subscription in list(self.subscriptions.items()):
            if wanted.get(replica) != subscription.source:
                subscription.task.cancel()
                self._stopping.add(subscription.task)
                subscription.task.add_done_callback(self._stopping.discard)
                del self.subscriptions[replica]
                self.index.clear(replica)
        new = []
        for replica, source in wanted.items():
            if replica not in self.subscriptions:
                if self._ctx is None:
                    self._ctx = zmq.asyncio.Context()
                self.subscriptions[replica] = Subscription(self._ctx, self.index, source, weakref.ref(self))
                new.append(self.subscriptions[replica])
        return new

    async def close(self) -> None:
        for subscription in self.subscriptions.values():
            await subscription.stop()
        self.subscriptions.clear()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None
