from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from modelyard.bench.client import Endpoint, build_payload, encode_payload, first_model
from modelyard.bench.load import LevelRun, LoadLevel, run_level
from modelyard.bench.metrics import DEFAULT_PERCENTILES, compute_metrics, compute_pooling_metrics, duration_of
from modelyard.bench.monitor import ClientMonitor, ClientUsage
from modelyard.bench.records import RequestRecord, Work, is_streamed
from modelyard.bench.targets import Target

ProgressHook = Callable[[LoadLevel, Sequence[Target], int], Callable[[RequestRecord], None]]


@dataclass(frozen=True)
class BenchConfig:
    targets: tuple[Target, ...]
    levels: tuple[LoadLevel, ...]
    prompts: tuple[Work, ...]
    endpoint: Endpoint = "chat"
    warmup: int = 0
    burstiness: float = 1.0
    seed: int = 0
    max_duration: float | None = None
    drain_s: float = 30.0
    request_timeout_s: float = 600.0
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    goodput_ms: dict[str, float] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    alternate: bool = False


@dataclass
class LevelResult:
    level: LoadLevel
    records: list[RequestRecord]
    client: ClientUsage
    metrics: dict[str, dict[str, Any]]


@dataclass
class BenchResult:
    config: BenchConfig
    levels: list[LevelResult]
    warmup_records: list[RequestRecord]


def _session(config: BenchConfig, max_in_flight: int) -> aiohttp.ClientSession:
    # idle connections are dropped before the server drops them (llama-server: after 5 s)
    connector = aiohttp.TCPConnector(limit=max_in_flight, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=4)
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",))


def _max_in_flight(config: BenchConfig) -> int:
    caps = [lvl.concurrency or len(config.prompts) for lvl in config.levels]
    return max(1, max(caps) * len(config.targets))


async def resolve_models(session: aiohttp.ClientSession, targets: Sequence[Target]) -> tuple[Target, ...]:
    """Fill each target's model with the first one its /models lists, where none was given."""
    missing = [t for t in targets if not t.model]
    found = await asyncio.gather(*(first_model(session, t) for t in missing))
    by_name = {t.name: m for t, m in zip(missing, found, strict=True)}
    return tuple(replace(t, model=by_name.get(t.name, t.model)) for t in targets)


def encode_all(config: BenchConfig, prompts: Sequence[Work]) -> dict[str, list[bytes]]:
    """Request bodies, encoded before the clock starts so that the load loop does no JSON work."""
    return {
        t.name: [encode_payload(build_payload(config.endpoint, t.model, p, config.extra_body)) for p in prompts]
        for t in config.targets
    }


async def _warmup(config: BenchConfig, session: aiohttp.ClientSession) -> list[RequestRecord]:
    if config.warmup <= 0:
        return []
    prompts = [config.prompts[i % len(config.prompts)] for i in range(config.warmup)]
    first = config.levels[0]
    level = LoadLevel(concurrency=max(1, min(config.warmup, first.concurrency or 1)))
    run = LevelRun(session=session, endpoint=config.endpoint, level=replace(level), targets=config.targets,
                   payloads=encode_all(config, prompts), prompts=prompts, alternate=config.alternate)
    await run_level(run)
    for rec in run.records:
        rec.level = "warmup"
    return run.records


async def _one_level(config: BenchConfig, session: aiohttp.ClientSession, level: LoadLevel,
                     payloads: dict[str, list[bytes]], on_done: Callable[[RequestRecord], None]) -> LevelResult:
    run = LevelRun(session=session, endpoint=config.endpoint, level=level, targets=config.targets,
                   payloads=payloads, prompts=config.prompts, on_done=on_done, max_duration=config.max_duration,
                   alternate=config.alternate)
    async with ClientMonitor() as monitor:
        await run_level(run, burstiness=config.burstiness, seed=config.seed, drain_s=config.drain_s)
    compute = compute_metrics if is_streamed(config.endpoint) else compute_pooling_metrics
    metrics = {}
    for target in config.targets:
        mine = [r for r in run.records if r.target == target.name]
        mine.sort(key=lambda r: r.index)
        metrics[target.name] = compute(mine, duration_of(mine), config.percentiles, config.goodput_ms)
    return LevelResult(level=level, records=run.records, client=monitor.usage, metrics=metrics)


async def run_bench(config: BenchConfig, progress: ProgressHook | None = None) -> BenchResult:
    """Warm up, then run every load level in turn; each level sends `len(config.prompts)` requests per target."""
    async with _session(config, _max_in_flight(config)) as session:
        config = replace(config, targets=await resolve_models(session, config.targets))
        warm = await _warmup(config, session)
        payloads = encode_all(config, config.prompts)
        results = []
        for level in config.levels:
            hook = progress(level, config.targets, len(config.prompts)) if progress else (lambda _r: None)
            results.append(await _one_level(config, session, level, payloads, hook))
    return BenchResult(config=config, levels=results, warmup_records=warm)
