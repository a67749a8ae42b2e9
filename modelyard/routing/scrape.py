"""Reads each ready replica's engine metrics (/metrics, Prometheus text) into its Endpoint, every ~0.5 s.

Only the few lines the routing plugins use are looked for, by a byte search, not a full parse: the names that the
model's engine adapter declares (engines/, `MetricNames`) for running and waiting requests, KV cache usage and
cache size. A replica that fails to answer keeps its last values and is asked again after a back-off; one without
/metrics (404), or whose engine declares none, is asked rarely or never.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from modelyard.engines.base import NO_METRICS, MetricNames
from modelyard.routing.endpoints import Endpoint, EndpointTable

INTERVAL_S = 0.5
TIMEOUT_S = 2.0
FAILURE_BACKOFF_S = 5.0
NO_METRICS_BACKOFF_S = 60.0



@dataclass(frozen=True)
class EngineSample:
    running: int
    waiting: int
    kv_usage: float
    kv_blocks: int | None = None
    block_size: int | None = None


def _lines(text: bytes, name: bytes) -> list[bytes]:
    """The sample lines of one metric name (any labels), found without splitting the whole text."""
    out = []
    start = 0 if text.startswith(name) else text.find(b"\n" + name)
    while start != -1:
        if text[start:start + 1] == b"\n":
            start += 1
        end = text.find(b"\n", start)
        line = text[start:end if end != -1 else len(text)]
        follow = line[len(name):len(name) + 1]
        if follow in (b"{", b" "):
            out.append(line)
        start = text.find(b"\n" + name, start + len(name)) if end != -1 else -1
    return out


def _value(line: bytes) -> float:
    brace = line.rfind(b"}")
    rest = line[brace + 1:] if brace != -1 else line.split(b" ", 1)[1]
    return float(rest.split()[0])


def _total(text: bytes, names: tuple[bytes, ...]) -> float | None:
    for name in names:
        lines = _lines(text, name)
        if lines:
            return sum(_value(line) for line in lines)
    return None


def _label(line: bytes, label: bytes) -> int | None:
    start = line.find(label + b'="')
    if start == -1:
        return None
    start += len(label) + 2
    try:
        return int(line[start:line.find(b'"', start)])
    except ValueError:
        return None


def parse(text: bytes, names: MetricNames) -> EngineSample | None:
    """The engine's load from its /metrics text; None when it exports none of the names its adapter declares."""
    try:
        running, waiting, kv = _total(text, names.running), _total(text, names.waiting), _total(text, names.kv_usage)
    except (ValueError, IndexError):
        return None
    if running is None and waiting is None:
        return None
    blocks = size = None
    info = _lines(text, names.cache_info) if names.cache_info else []
    if info:
        blocks, size = _label(info[0], b"num_gpu_blocks"), _label(info[0], b"block_size")
    kv_usage = (kv or 0.0) / (100.0 if (kv or 0.0) > 1.0 else 1.0)  # a few exporters give a percentage
    return EngineSample(int(running or 0), int(waiting or 0), kv_usage, blocks, size)


def apply(endpoint: Endpoint, sample: EngineSample, now: float) -> None:
    endpoint.running, endpoint.waiting, endpoint.kv_usage = sample.running, sample.waiting, sample.kv_usage
    if sample.kv_blocks is not None:
        endpoint.kv_blocks, endpoint.kv_block_size = sample.kv_blocks, sample.block_size
    endpoint.scraped_at = now
    endpoint.in_flight_at_scrape = endpoint.in_flight


class MetricsScraper:
    """`names`: by model name, what its engine's metrics are called; a model without names is never scraped."""

    def __init__(self, table: EndpointTable, names: Mapping[str, MetricNames], interval_s: float = INTERVAL_S,
                 timeout_s: float = TIMEOUT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.table, self.names, self.interval_s, self.clock = table, names, interval_s, clock
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._not_before: dict[str, float] = {}  # url -> when to ask again after a failure
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            started = self.clock()
            await self.scrape_once()
            await asyncio.sleep(max(0.05, self.interval_s - (self.clock() - started)))

    async def scrape_once(self) -> None:
        now = self.clock()
        if self._not_before:
            self._not_before = {url: when for url, when in self._not_before.items() if when > now}
        due = [e for e in self.table
               if e.ready and self._not_before.get(e.url, 0.0) <= now and self._names(e) is not NO_METRICS]
        if due:
            await asyncio.gather(*(self._scrape(e) for e in due))

    def _names(self, endpoint: Endpoint) -> MetricNames:
        names = self.names.get(endpoint.model)
        return names if names is not None and (names.running or names.waiting) else NO_METRICS

    async def _scrape(self, endpoint: Endpoint) -> None:
        assert self._session is not None
        url = endpoint.url
        try:
            async with self._session.get(url + "/metrics", headers=endpoint.headers, timeout=self.timeout) as resp:
                if resp.status != 200:
                    self._not_before[url] = self.clock() + NO_METRICS_BACKOFF_S
                    return
                text = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            self._not_before[url] = self.clock() + FAILURE_BACKOFF_S
            return
        sample = parse(text, self._names(endpoint))
        if sample is None:
            self._not_before[url] = self.clock() + NO_METRICS_BACKOFF_S
            return
        self._not_before.pop(url, None)
        if endpoint.url == url:
            apply(endpoint, sample, self.clock())
