"""The gateway's last minutes, by model, for the status page (/ui): requests, errors by kind, TTFT and end-to-end
latency percentiles, completion tokens.

Each gateway process keeps a ring of BUCKETS buckets of BUCKET_S seconds per model, filled as it records a request
(`Gateway.record`: an index, a few adds and two bisects into fixed log-spaced bounds, no JSON). With several
worker processes, each publishes its ring about once a second into the shared metrics folder (as the routing
timings are) and the worker that answers /ui/state adds up its own ring and the others'. Buckets are numbered by
time.perf_counter() // BUCKET_S: on Linux that clock is CLOCK_MONOTONIC, one clock for every process of the host.
"""

from __future__ import annotations

import contextlib
import os
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

BUCKET_S = 10.0
BUCKETS = 30  # five minutes
RATE_WINDOW_S = 60.0  # requests/s, tokens/s and percentiles over the last minute
# latency bounds: 1 ms to about 5 minutes, each 1.25 times the last (a percentile is within that step)
BOUNDS: tuple[float, ...] = tuple(0.001 * 1.25**i for i in range(57))
FILE_PREFIX = "recent_"
STALE_FILE_S = BUCKET_S * BUCKETS  # a file not rewritten for this long holds nothing in the window
# outcomes the relay names (gateway/relay.py, gateway/app.py); any other name is an upstream failure
KNOWN_ERRORS = frozenset({"timeout", "no_replica", "upstream_error", "client_disconnected"})
REJECTIONS = {401: "key_refused", 403: "model_not_allowed", 429: "limited", 503: "unavailable"}


def error_kind(status: int, error: str | None) -> str | None:
    """How a relayed request failed, in a few words (a bounded set), or None if it did not."""
    if error:
        return error if error in KNOWN_ERRORS else "upstream_error"
    if status >= 500:
        return "engine_5xx"
    if status >= 400:
        return "engine_4xx"
    return None


def rejection_kind(status: int) -> str:
    return REJECTIONS.get(status, f"rejected_{status}")


class Bucket:
    __slots__ = ("index", "requests", "errors", "ttft", "e2e", "tokens")

    def __init__(self, index: int) -> None:
        self.index = index
        self.requests = 0
        self.tokens = 0
        self.errors: dict[str, int] = {}
        self.ttft = [0] * (len(BOUNDS) + 1)
        self.e2e = [0] * (len(BOUNDS) + 1)

    def dump(self) -> list[Any]:
        return [self.index, self.requests, self.tokens, self.errors, self.ttft, self.e2e]

    def add(self, data: list[Any]) -> None:
        """Another process's bucket of the same index, added to this one."""
        _, requests, tokens, errors, ttft, e2e = data
        self.requests += int(requests)
        self.tokens += int(tokens)
        for kind, count in errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + int(count)
        if len(ttft) == len(self.ttft) and len(e2e) == len(self.e2e):
            self.ttft = [a + int(b) for a, b in zip(self.ttft, ttft, strict=True)]
            self.e2e = [a + int(b) for a, b in zip(self.e2e, e2e, strict=True)]


def percentile(counts: list[int], q: float) -> float | None:
    """The q-quantile of a histogram over BOUNDS, interpolated (log-linear) within its bucket."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            low = BOUNDS[i - 1] if i > 0 else BOUNDS[0] / 1.25
            high = BOUNDS[i] if i < len(BOUNDS) else BOUNDS[-1]
            return float(low * (high / low) ** max(0.0, min(1.0, (rank - seen) / count)))
        seen += count
    return BOUNDS[-1]


def _sum(lists: list[list[int]]) -> list[int]:
    return [sum(column) for column in zip(*lists, strict=True)] if lists else [0] * (len(BOUNDS) + 1)


@dataclass
class ModelWindow:
    """One model's buckets in the window, oldest first, None where nothing was recorded."""

    now_index: int
    buckets: dict[int, Bucket] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        last = [b for i, b in self.buckets.items() if i > self.now_index - RATE_WINDOW_S / BUCKET_S]
        errors: dict[str, int] = {}
        for bucket in self.buckets.values():
            for kind, count in bucket.errors.items():
                errors[kind] = errors.get(kind, 0) + count
        ttft, e2e = _sum([b.ttft for b in last]), _sum([b.e2e for b in last])
        indexes = range(self.now_index - BUCKETS + 1, self.now_index + 1)
        series = [self.buckets.get(i) for i in indexes]
        return {
            "requests_per_s": sum(b.requests for b in last) / RATE_WINDOW_S,
            "tokens_per_s": sum(b.tokens for b in last) / RATE_WINDOW_S,
            "ttft_p50_s": percentile(ttft, 0.5), "ttft_p90_s": percentile(ttft, 0.9),
            "e2e_p50_s": percentile(e2e, 0.5), "e2e_p90_s": percentile(e2e, 0.9),
            "errors": errors,  # over the whole window
            "series": {
                "requests_per_s": [b.requests / BUCKET_S if b else 0.0 for b in series],
                "ttft_p90_s": [percentile(b.ttft, 0.9) if b else None for b in series],
                "errors": [sum(b.errors.values()) if b else 0 for b in series],
            },
        }


class RecentTraffic:
    """The ring of one gateway process; `shared_dir` (the metrics folder of several workers) to publish it."""

    def __init__(self, shared_dir: Path | None = None) -> None:
        self.shared_dir = shared_dir
        self._rings: dict[str, list[Bucket | None]] = {}

    def _bucket(self, model: str, now: float) -> Bucket:
        index = int(now // BUCKET_S)
        ring = self._rings.get(model)
        if ring is None:
            ring = self._rings[model] = [None] * BUCKETS
        bucket = ring[index % BUCKETS]
        if bucket is None or bucket.index != index:
            bucket = ring[index % BUCKETS] = Bucket(index)
        return bucket

    def record(self, model: str, now: float, ttft_s: float | None, e2e_s: float, tokens: int, status: int,
               error: str | None) -> None:
        """One relayed request, at `now` (time.perf_counter())."""
        bucket = self._bucket(model, now)
        bucket.requests += 1
        bucket.tokens += tokens
        kind = error_kind(status, error)
        if kind is not None:
            bucket.errors[kind] = bucket.errors.get(kind, 0) + 1
        elif ttft_s is not None:
            bucket.ttft[bisect_left(BOUNDS, ttft_s)] += 1
        if kind is None:
            bucket.e2e[bisect_left(BOUNDS, e2e_s)] += 1

    def reject(self, model: str, kind: str, now: float | None = None) -> None:
        """A request turned away before it reached a replica (limits, queue, no ready replica)."""
        bucket = self._bucket(model, time.perf_counter() if now is None else now)
        bucket.requests += 1
        bucket.errors[kind] = bucket.errors.get(kind, 0) + 1

    def snapshot(self, now: float) -> dict[str, Any]:
        low = int(now // BUCKET_S) - BUCKETS
        return {"models": {model: [b.dump() for b in ring if b is not None and b.index > low]
                           for model, ring in self._rings.items()}}

    def publish(self, in_flight: dict[str, int] | None = None, now: float | None = None) -> None:
        """Writes this process's ring (and its requests in flight by replica) where its siblings read it (several
        workers only)."""
        if self.shared_dir is None:
            return
        path = self.shared_dir / f"{FILE_PREFIX}{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        data = {**self.snapshot(time.perf_counter() if now is None else now), "published_at": time.time(),
                "in_flight": in_flight or {}}
        tmp.write_bytes(orjson.dumps(data))
        tmp.replace(path)

    def others(self) -> list[dict[str, Any]]:
        """What the sibling processes published lately (not this one's own file)."""
        if self.shared_dir is None:
            return []
        own, found = f"{FILE_PREFIX}{os.getpid()}.json", []
        oldest = time.time() - STALE_FILE_S
        for path in self.shared_dir.glob(f"{FILE_PREFIX}*.json"):
            with contextlib.suppress(OSError, ValueError):
                if path.name != own and path.stat().st_mtime >= oldest:
                    data = orjson.loads(path.read_bytes())
                    if isinstance(data, dict):
                        found.append(data)
        return found

    def window(self, now: float, others: list[dict[str, Any]] | None = None) -> dict[str, ModelWindow]:
        """Every model's buckets in the window: this process's and, added in, the others'."""
        index = int(now // BUCKET_S)
        windows: dict[str, ModelWindow] = {}
        for data in [self.snapshot(now), *(self.others() if others is None else others)]:
            for model, buckets in (data.get("models") or {}).items():
                target = windows.setdefault(model, ModelWindow(index))
                for item in buckets:
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        at = int(item[0])
                        if index - BUCKETS < at <= index:
                            target.buckets.setdefault(at, Bucket(at)).add(item)
        return windows
