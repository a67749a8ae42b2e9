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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from modelyard.store.base import Store, UsageRecord, tokens_by_key

FlushCallback = Callable[[Mapping[str, int]], Awaitable[None]]


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
