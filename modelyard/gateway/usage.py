"""Usage accounting off the request's path: `UsageWriter` buffers records in memory and a background task writes
them to the store in batches.

In the gateway's lifespan::

    writer = UsageWriter(store, on_flushed=limiter.commit_budget, retention_s=days * 86400)
    writer.start()
    try:
        yield
    finally:
        await writer.close()        # the lifespan's end runs this on SIGTERM/SIGINT: everything buffered is written

and per finished request (from the relay's `finish` callback; it never awaits, never blocks)::

    writer.record(UsageRecord(ts=time.time(), key_name=key.name, model=model, replica=endpoint.id,
                              prompt_tokens=..., completion_tokens=..., cached_tokens=...,
                              ttft_s=..., e2e_s=..., status=outcome.status, error=outcome.error))

A batch is written every `flush_interval_s`, or as soon as `batch_size` records wait. `write_usage` also adds
the batch's tokens to the keys' `used_tokens`; then `on_flushed({key_name: tokens})` tells the limiter that
those tokens are now in the store (so the limiter stops counting them as pending against the budget).
A store that fails keeps the batch in the buffer for the next try; the buffer is bounded by `max_buffer`
(the oldest records are dropped beyond it, and counted in `dropped`). Records older than `retention_s` are
purged every `purge_every_s`.

What a request is charged (`charge`): the usage the engine reported (a non-streamed body's, or the stream's usage
event, found by gateway/sse.py), else, for an answer that was served, an estimate marked as such in its row: the
prompt at its reservation's estimate (gateway/tokens.py) and, for a stream, one completion token per data event
relayed (a stream cut by the client, the replica or shutdown is charged what it delivered), for a body, its text's
bytes / BYTES_PER_TOKEN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from modelyard.gateway.tokens import Reservation
from modelyard.store.base import Store, UsageRecord, tokens_by_key

FlushCallback = Callable[[Mapping[str, int]], Awaitable[None]]
BYTES_PER_TOKEN = 4


class UsageWriter:
    def __init__(self, store: Store, *, flush_interval_s: float = 0.5, batch_size: int = 500,
                 max_buffer: int = 100_000, retention_s: float | None = None, purge_every_s: float = 3600.0,
                 on_flushed: FlushCallback | None = None, logger: logging.Logger | None = None) -> None:
        self.store = store
        self.flush_interval_s, self.batch_size, self.max_buffer = flush_interval_s, batch_size, max_buffer
        self.retention_s, self.purge_every_s = retention_s, purge_every_s
        self.on_flushed = on_flushed
        self.log = logger or logging.getLogger(__name__)
        self.dropped = 0
        self.written = 0
        self._buffer: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_purge = 0.0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="modelyard-usage-writer")

    def record(self, record: UsageRecord) -> None:
        if self._closed:
            self.dropped += 1
            return
        self._buffer.append(record)
        if len(self._buffer) > self.max_buffer:
            self._buffer.popleft()
            self.dropped += 1
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    async def _run(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                await self._purge_if_due()
            except Exception:  # the store is down: the records stay buffered for the next round
                self.log.exception("usage: writing %d buffered records failed; will retry", len(self._buffer))

    async def flush(self) -> None:
        """Writes everything buffered now; on failure the unwritten records stay buffered and it raises."""
        async with self._lock:
            while self._buffer:
                batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
                try:
                    await self.store.write_usage(batch)
                except BaseException:
                    self._buffer.extendleft(reversed(batch))
                    raise
                self.written += len(batch)
                if self.on_flushed is not None:
                    await self.on_flushed(tokens_by_key(batch))

    async def _purge_if_due(self) -> None:
        now = time.time()
        if self.retention_s is None or now - self._last_purge < self.purge_every_s:
            return
        self._last_purge = now
        removed = await self.store.purge_usage(now - self.retention_s)
        if removed:
            self.log.info("usage: purged %d records older than %.0fs", removed, self.retention_s)

    async def close(self) -> None:
        """Stops the background task and writes what is still buffered. Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:  # not cancelled: a write in progress finishes, so nothing is written twice
            self._wake.set()
            await task
        try:
            await self.flush()
        except Exception:
            self.log.exception("usage: %d records could not be written at close", len(self._buffer))
            raise


@dataclass(frozen=True)
class Charge:
    """The tokens one request is charged; `estimated` when the engine did not say (see the module's doc)."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def charge(usage: bytes, served: bool, stream: bool, events: int, reservation: Reservation | None) -> Charge:
    """`usage`: the non-streamed body or the stream's usage event; `served`: the engine answered 200 (a stream
    started); `events`: the stream's data events relayed."""
    counts = parse_usage(usage)
    if counts:
        completion = counts.get("completion_tokens", 0)
        prompt = counts.get("prompt_tokens", counts.get("total_tokens", 0) - completion)  # rerank: total only
        return Charge(prompt, completion, counts.get("cached_tokens", 0))
    if not served:
        return Charge()
    prompt = reservation.prompt if reservation is not None else 0
    if stream:
        return Charge(prompt, events, estimated=True)
    if reservation is not None and not reservation.completion:  # embeddings, rerank: nothing generated
        return Charge(prompt, estimated=True)
    text = completion_text(usage, stream=False).encode()
    return Charge(prompt, -(-len(text) // BYTES_PER_TOKEN), estimated=True)


def completion_text(body: bytes, stream: bool) -> str:
    """The text of the choices of a body, or of a stream's data events."""
    pieces: list[str] = []
    documents = [line[5:].strip() for line in body.split(b"\n") if line.startswith(b"data:")] if stream else [body]
    for document in documents:
        with contextlib.suppress(orjson.JSONDecodeError, ValueError, AttributeError):
            data = orjson.loads(document)
            choices = (data.get("choices") or []) if isinstance(data, dict) else []
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                part = choice.get("text") or (choice.get("delta") or choice.get("message") or {}).get("content")
                if isinstance(part, str):
                    pieces.append(part)
    return "".join(pieces)


def texts(payload: dict[str, Any], body: bytes, stream: bool) -> dict[str, str]:
    """Prompt and completion text, for a model whose config opts in (store_text: true); off the hot path else."""
    prompt = payload.get("messages", payload.get("prompt", payload.get("input")))
    return {"prompt_text": prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode(),
            "completion_text": completion_text(body, stream)}


def parse_usage(text: bytes) -> dict[str, int]:
    """Token counts from a non-streamed body or from the stream's usage event."""
    if not text:
        return {}
    start = text.find(b"{")
    with contextlib.suppress(orjson.JSONDecodeError, ValueError):
        data = orjson.loads(text[start:].strip())
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            out = {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                out["cached_tokens"] = details["cached_tokens"]
            return out
    return {}
