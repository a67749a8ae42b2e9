from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelyard.bench.records import RequestRecord, is_streamed

GOODPUT_KEYS = ("ttft", "tpot", "e2el")
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
POOLING_LATENCY_METRICS = ("e2el",)
DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


def parse_percentiles(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in text.replace(" ", ",").split(",") if p)
    except ValueError as exc:
        raise ValueError(f"percentiles must be numbers, got {text!r}") from exc
    if not values or any(not 0 <= p <= 100 for p in values):
        raise ValueError(f"percentiles must be in [0, 100], got {text!r}")
    return values


def latency_metrics(endpoint: str) -> tuple[str, ...]:
    """The latencies an endpoint has: an embeddings or rerank answer comes in one piece, so only its E2EL."""
    return LATENCY_METRICS if is_streamed(endpoint) else POOLING_LATENCY_METRICS


def parse_goodput(items: Sequence[str], keys: Sequence[str] = GOODPUT_KEYS) -> dict[str, float]:
    """`ttft:500 tpot:50 e2el:2000` (milliseconds), given as one string or several, comma or space separated."""
    slos: dict[str, float] = {}
    for item in " ".join(items).replace(",", " ").split():
        key, sep, value = item.partition(":")
        if not sep or key not in keys:
            raise ValueError(f"--goodput takes KEY:MS with KEY in {', '.join(keys)}; got {item!r}")
        ms = float(value)
        if ms < 0 or not math.isfinite(ms):
            raise ValueError(f"--goodput {key}: must be a non-negative number of milliseconds")
        slos[key] = ms
    return slos


def distribution(values_s: Sequence[float], percentiles: Sequence[float]) -> dict[str, float]:
    """Mean, median, std and percentiles in milliseconds; zeros for an empty list (as vLLM reports)."""
    arr = np.asarray(values_s if len(values_s) else [0.0], dtype=np.float64) * 1000.0
    out = {"mean": float(np.mean(arr)), "median": float(np.median(arr)), "std": float(np.std(arr))}
    for p in percentiles:
        out[f"p{p:g}"] = float(np.percentile(arr, p))
    return out


def peak_concurrency(done: Sequence[RequestRecord]) -> int:
    """Exact peak of requests in flight: sweep over half-open [start, start + latency) of successful requests."""
    events = []
    for r in done:
        events.append((r.start_s, 1))
        events.append((r.start_s + r.latency, -1))
    events.sort()
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def peak_output_per_s(done: Sequence[RequestRecord]) -> float:
    """Most content chunks received in one one-second bucket (tokens when the server sends one per chunk)."""
    if not done:
        return 0.0
    t0 = min(r.start_s for r in done)
    t1 = max(r.start_s + r.latency for r in done)
    buckets = np.zeros(int(np.ceil(t1 - t0)) + 1)
    for r in done:
        t = r.start_s + r.ttft
        times = [t]
        for gap in r.itl:
            t += gap
            times.append(t)
        for when in times:
            b = int(when - t0)
            if 0 <= b < len(buckets):
                buckets[b] += 1
    return float(buckets.max())


def _good_count(done: Sequence[RequestRecord], slos_ms: dict[str, float]) -> int:
    if not slos_ms:
        return 0
    good = 0
    for r in done:
        values = {"ttft": r.ttft, "tpot": r.tpot(), "e2el": r.latency}
        if all(slos_ms[k] / 1000.0 >= values[k] for k in slos_ms):
            good += 1
    return good


def _common(records: Sequence[RequestRecord], duration_s: float,
            goodput_ms: dict[str, float] | None) -> tuple[dict[str, Any], list[RequestRecord], float]:
    """What every kind of load reports: counts, requests/s, peak concurrency, retries, goodput."""
    done = [r for r in records if r.success]
    dur = duration_s if duration_s > 0 else float("nan")
    metrics: dict[str, Any] = {
        "completed": len(done),
        "failed": sum(1 for r in records if not r.success and not r.cancelled),
        "cancelled": sum(1 for r in records if r.cancelled),
        "duration_s": duration_s,
        "request_throughput": len(done) / dur,
        "max_concurrent_requests": peak_concurrency(done),
        "retried_requests": sum(1 for r in records if r.retries),
    }
    if goodput_ms:
        metrics["request_goodput"] = _good_count(done, goodput_ms) / dur
    return metrics, done, dur


def compute_metrics(
    records: Sequence[RequestRecord],
    duration_s: float,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    goodput_ms: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The metrics of `vllm bench serve` (calculate_metrics) for one target at one load level."""
    metrics, done, dur = _common(records, duration_s, goodput_ms)
    tpots = [r.tpot() for r in done if r.output_tokens > 1]
    itls = [gap for r in done for gap in r.itl]
    total_in = sum(r.prompt_tokens for r in done)
    total_out = sum(r.output_tokens for r in done)
    metrics.update({
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "output_throughput": total_out / dur,
        "total_token_throughput": (total_in + total_out) / dur,
        "max_output_tokens_per_s": peak_output_per_s(done),
        "output_tokens_from_usage": sum(1 for r in done if r.output_tokens_source == "usage"),
    })
    series = {"ttft": [r.ttft for r in done], "tpot": tpots, "itl": itls, "e2el": [r.latency for r in done]}
    for name in LATENCY_METRICS:
        metrics[f"{name}_ms"] = distribution(series[name], percentiles)
    return metrics


def compute_pooling_metrics(
    records: Sequence[RequestRecord],
    duration_s: float,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    goodput_ms: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Embeddings or rerank at one load level for one target: requests and inputs (texts embedded, documents
    scored) per second, and the latency of whole answers; there are no tokens out and nothing streamed."""
    metrics, done, dur = _common(records, duration_s, goodput_ms)
    total_inputs = sum(r.inputs for r in done)
    total_in = sum(r.prompt_tokens for r in done)
    metrics.update({
        "total_inputs": total_inputs,
        "total_input_tokens": total_in,
        "input_throughput": total_inputs / dur,
        "input_token_throughput": total_in / dur,
        "input_tokens_from_usage": sum(1 for r in done if r.prompt_tokens_source == "usage"),
    })
    metrics["e2el_ms"] = distribution([r.latency for r in done], percentiles)
    return metrics


def duration_of(records: Sequence[RequestRecord]) -> float:
    """Level start to the last request's return, like vLLM's benchmark_duration."""
    return max((r.done_s for r in records), default=0.0)
