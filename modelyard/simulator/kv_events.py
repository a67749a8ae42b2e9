"""The simulator's KV events, published as vLLM's `ZmqEventPublisher` does (vllm/distributed/kv_events.py).

A ZMQ PUB socket sends each batch as three frames: the topic, the sequence number (8 bytes, big-endian, from 0),
and a msgpack `KVEventBatch` (ts, events: `BlockStored`, `BlockRemoved`, `AllBlocksCleared`, each a tagged struct
encoded as a map with its class name under "type"). A ROUTER socket serves replays: a request of one frame, the
first sequence number wanted (8 bytes, big-endian, after the REQ envelope), is answered with every buffered batch
from there as (seq, payload) and then the end marker (seq -1, empty payload). The last `buffer_steps` batches are
kept. Both sockets bind (the simulator is the stable side; vLLM binds when its address has a `*`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass

import msgspec
import zmq
import zmq.asyncio

from modelyard.simulator.kvcache import CacheEvent

log = logging.getLogger(__name__)

MEDIUM_GPU = "GPU"
END_SEQ = (-1).to_bytes(8, "big", signed=True)


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: str | None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(msgspec.Struct, omit_defaults=True, gc=False):
    ts: float
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]
    data_parallel_rank: int | None = None


@dataclass(frozen=True)
class KVEventsConfig:
    endpoint: str  # the PUB address, e.g. tcp://127.0.0.1:5557
    replay_endpoint: str | None = None  # the ROUTER address; None: no replay
    topic: str = ""
    buffer_steps: int = 10_000
    hwm: int = 100_000


def default_replay(endpoint: str) -> str | None:
    """The replay address next to a tcp PUB address: the port after it."""
    head, sep, port = endpoint.rpartition(":")
    if not endpoint.startswith("tcp://") or not sep or not port.isdigit():
        return None
    return f"{head}:{int(port) + 1}"


def to_structs(events: list[CacheEvent], block_size: int) -> list[BlockStored | BlockRemoved | AllBlocksCleared]:
    out: list[BlockStored | BlockRemoved | AllBlocksCleared] = []
    for event in events:
        if event[0] == "stored":
            out.append(BlockStored(block_hashes=event[1], parent_block_hash=event[2], token_ids=event[3],
                                   block_size=block_size, lora_id=None, medium=MEDIUM_GPU))
        elif event[0] == "removed":
            out.append(BlockRemoved(block_hashes=event[1], medium=MEDIUM_GPU))
        else:
            out.append(AllBlocksCleared())
    return out


class Publisher:
    """Publishes batches from the simulator's loop (a PUB send never blocks: past the high-water mark ZMQ drops,
    and a subscriber sees the gap in the sequence numbers) and answers replay requests in a task of its own."""

    def __init__(self, config: KVEventsConfig, block_size: int) -> None:
        self.config, self.block_size = config, block_size
        self._ctx = zmq.asyncio.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.set_hwm(config.hwm)
        self._pub.bind(config.endpoint)
        self._replay: zmq.asyncio.Socket | None = None
        if config.replay_endpoint is not None:
            self._replay = self._ctx.socket(zmq.ROUTER)
            self._replay.bind(config.replay_endpoint)
        self._topic = config.topic.encode()
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._encoder = msgspec.msgpack.Encoder()
        self.seq = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._replay is not None and self._task is None:
            self._task = asyncio.create_task(self._serve_replay(), name="kv-events replay")

    def publish(self, events: list[CacheEvent]) -> None:
        if not events:
            return
        payload = self._encoder.encode(KVEventBatch(ts=time.time(), events=to_structs(events, self.block_size)))
        seq = self.seq
        self.seq += 1
        self._buffer.append((seq, payload))
        with contextlib.suppress(zmq.Again):
            self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload), flags=zmq.NOBLOCK)

    async def _serve_replay(self) -> None:
        assert self._replay is not None
        while True:
            frames = await self._replay.recv_multipart()
            if len(frames) != 3:
                log.warning("invalid KV-event replay request (%d frames)", len(frames))
                continue
            client, _empty, start = frames
            first = int.from_bytes(start, "big")
            for seq, payload in list(self._buffer):
                if seq >= first:
                    await self._replay.send_multipart((client, b"", seq.to_bytes(8, "big"), payload))
            await self._replay.send_multipart((client, b"", END_SEQ, b""))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pub.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)
        self._ctx.term()
