from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from modelyard.bench.client import Endpoint, send_request
from modelyard.bench.records import Batch, RequestRecord, Work
from modelyard.bench.targets import Target


@dataclass(frozen=True)
class LoadLevel:
    """Closed loop at `concurrency` in flight, or open loop at `rate` req/s (capped by `concurrency` if set).
    Both apply per target."""

    concurrency: int | None = None
    rate: float | None = None

    @property
    def label(self) -> str:
        if self.rate is None:
            return f"c={self.concurrency}"
        cap = f",c<={self.concurrency}" if self.concurrency else ""
        return f"rate={self.rate:g}{cap}"

    @property
    def x(self) -> float:
        return float(self.rate if self.rate is not None else self.concurrency or 0)


def parse_levels(concurrency: str | None, rate: str | None) -> list[LoadLevel]:
    concs = [int(v) for v in concurrency.split(",") if v.strip()] if concurrency else []
    rates = [float(v) for v in rate.split(",") if v.strip()] if rate else []
    if any(c < 1 for c in concs) or any(r <= 0 for r in rates):
        raise ValueError("concurrency must be >= 1 and rate > 0 (inf allowed)")
    if rates:
        if len(concs) > 1:
            raise ValueError("with --rate, --concurrency takes one value (a cap on requests in flight)")
        cap = concs[0] if concs else None
        return [LoadLevel(concurrency=cap, rate=r) for r in rates]
    return [LoadLevel(concurrency=c) for c in (concs or [1])]


def arrival_times(n: int, rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """Send offsets (s) for n requests, as vLLM's get_request: gamma gaps with shape=burstiness and mean 1/rate
    (burstiness 1 is Poisson), then scaled so the last request goes at n / rate."""
    if burstiness <= 0:
        raise ValueError("burstiness must be > 0")
    if math.isinf(rate):
        return np.zeros(n)
    if math.isinf(burstiness):
        gaps = np.full(n, 1.0 / rate)
    else:
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    times = np.cumsum(gaps)
    if n and times[-1] > 0:
        times *= (n / rate) / times[-1]
    return times


@dataclass
class LevelRun:
    session: aiohttp.ClientSession
    endpoint: Endpoint
    level: LoadLevel
    targets: Sequence[Target]
    payloads: dict[str, list[bytes]]
    prompts: Sequence[Work]
    on_done: Callable[[RequestRecord], None] = lambda _r: None
    max_duration: float | None = None
    zero: float = 0.0
    alternate: bool = False
    records: list[RequestRecord] = field(default_factory=list)

    def past_deadline(self) -> bool:
        return self.max_duration is not None and time.perf_counter() - self.zero >= self.max_duration

    async def one(self, target: Target, index: int, arrived: float | None = None) -> None:
        prompt = self.prompts[index]
        rec = RequestRecord(target=target.name, level=self.level.label, index=index, group=prompt.group,
                            prompt_tokens=prompt.prompt_tokens_estimate, prompt_tokens_source="estimate")
        self.records.append(rec)
        sent = time.perf_counter()
        if arrived is not None:
            rec.queue_s = sent - arrived
        inputs = len(prompt.texts) if isinstance(prompt, Batch) else 0
        await send_request(self.session, target, self.endpoint, self.payloads[target.name][index], rec, self.zero,
                           inputs)
        self.on_done(rec)


async def _closed_target(run: LevelRun, target: Target, concurrency: int) -> None:
    indices = iter(range(len(run.prompts)))

    async def worker() -> None:
        for i in indices:
            if run.past_deadline():
                return
            await run.one(target, i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _closed_alternate(run: LevelRun, concurrency: int) -> None:
    """Each prompt goes to every target in turn (who goes first rotates), one after the other."""
    indices = iter(range(len(run.prompts)))
    n_targets = len(run.targets)

    async def worker() -> None:
        for i in indices:
            for k in range(n_targets):
                if run.past_deadline():
                    return
                await run.one(run.targets[(i + k) % n_targets], i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _open_all(run: LevelRun, schedule: np.ndarray) -> None:
    cap = run.level.concurrency
    sems = {t.name: asyncio.Semaphore(cap) for t in run.targets} if cap else {}
    tasks: list[asyncio.Task[None]] = []

    async def limited(target: Target, i: int, arrived: float) -> None:
        if not sems:
            await run.one(target, i, arrived)
            return
        async with sems[target.name]:
            await run.one(target, i, arrived)

    n_targets = len(run.targets)
    try:
        for i, at in enumerate(schedule):
            delay = run.zero + float(at) - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if run.past_deadline():
                break
            now = time.perf_counter()
            for k in range(n_targets):  # rotate who goes first at each arrival
                target = run.targets[(i + k) % n_targets]
                tasks.append(asyncio.create_task(limited(target, i, now)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def run_level(run: LevelRun, burstiness: float = 1.0, seed: int = 0, drain_s: float = 30.0) -> None:
    """Run one load level against every target at once; records land in `run.records`."""
    level = run.level
    body: asyncio.Future[Any]
    run.zero = time.perf_counter()
    if level.rate is None and run.alternate:
        body = asyncio.ensure_future(_closed_alternate(run, level.concurrency or 1))
    elif level.rate is None:
        body = asyncio.gather(*(_closed_target(run, t, level.concurrency or 1) for t in run.targets))
    else:
        schedule = arrival_times(len(run.prompts), level.rate, burstiness, np.random.default_rng(seed))
        body = asyncio.ensure_future(_open_all(run, schedule))
    if run.max_duration is None:
        await body
        return
    done, _ = await asyncio.wait({body}, timeout=run.max_duration + drain_s)
    if not done:
        body.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await body
    else:
        body.result()
