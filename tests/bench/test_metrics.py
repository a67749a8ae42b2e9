from __future__ import annotations

import pytest

from modelyard.bench.metrics import (
    compute_metrics,
    compute_pooling_metrics,
    duration_of,
    latency_metrics,
    parse_goodput,
    parse_percentiles,
    peak_concurrency,
)
from modelyard.bench.records import RequestRecord


def _rec(index: int, start: float, ttft: float, itl: list[float], out: int, prompt: int) -> RequestRecord:
    latency = ttft + sum(itl)
    return RequestRecord(target="t", level="c=1", index=index, start_s=start, done_s=start + latency + 0.001,
                         success=True, ttft=ttft, latency=latency, itl=itl, content_chunks=len(itl) + 1,
                         output_tokens=out, output_tokens_source="usage", prompt_tokens=prompt)


def trace() -> list[RequestRecord]:
    """Three successes with known timings and one failure, over 2 s."""
    return [
        _rec(0, 0.0, 0.1, [0.02, 0.02, 0.02, 0.04], out=5, prompt=10),  # TPOT (0.2-0.1)/4 = 25 ms
        _rec(1, 0.05, 0.3, [0.05], out=2, prompt=20),  # E2EL 350 ms, TPOT 50 ms, ends at 0.4
        _rec(2, 0.4, 0.2, [], out=1, prompt=30),  # one token: no TPOT (0 for goodput); starts as #1 ends
        RequestRecord(target="t", level="c=1", index=3, start_s=0.5, done_s=0.6, error="HTTP 500"),
    ]


def test_counts_and_throughput() -> None:
    m = compute_metrics(trace(), duration_s=2.0)
    assert (m["completed"], m["failed"], m["cancelled"]) == (3, 1, 0)
    assert m["total_input_tokens"] == 60 and m["total_output_tokens"] == 8
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["output_throughput"] == pytest.approx(4.0)
    assert m["total_token_throughput"] == pytest.approx(34.0)
    assert "request_goodput" not in m


def test_latency_distributions() -> None:
    m = compute_metrics(trace(), duration_s=2.0, percentiles=(50, 90, 99))
    ttft, tpot, itl, e2el = m["ttft_ms"], m["tpot_ms"], m["itl_ms"], m["e2el_ms"]
    assert ttft["mean"] == pytest.approx(200) and ttft["median"] == pytest.approx(200)
    assert ttft["p90"] == pytest.approx(280) and ttft["p99"] == pytest.approx(298)
    assert tpot["mean"] == pytest.approx(37.5) and tpot["p90"] == pytest.approx(47.5)  # single-token excluded
    assert itl["mean"] == pytest.approx(30) and itl["median"] == pytest.approx(20)
    assert itl["p90"] == pytest.approx(46)
    assert e2el["mean"] == pytest.approx(250) and e2el["median"] == pytest.approx(200)
    assert e2el["p99"] == pytest.approx(347)
    assert m["max_concurrent_requests"] == 2  # [0,0.2) and [0.05,0.4); the third starts as the second ends
    assert m["max_output_tokens_per_s"] == 8


def test_goodput_counts_requests_within_every_slo() -> None:
    m = compute_metrics(trace(), duration_s=2.0, goodput_ms=parse_goodput(["ttft:250", "tpot:40"]))
    assert m["request_goodput"] == pytest.approx(1.0)  # #0 and #2 (TPOT 0) are good; #1's TTFT is 300 ms
    m = compute_metrics(trace(), duration_s=2.0, goodput_ms=parse_goodput(["e2el:100"]))
    assert m["request_goodput"] == 0.0


def test_tpot_definition() -> None:
    rec = trace()[0]
    assert rec.tpot() == pytest.approx((rec.latency - rec.ttft) / (rec.output_tokens - 1))
    assert trace()[2].tpot() == 0.0


def test_empty_and_all_failed() -> None:
    m = compute_metrics([trace()[3]], duration_s=1.0)
    assert m["completed"] == 0 and m["failed"] == 1 and m["ttft_ms"]["mean"] == 0.0
    assert m["max_concurrent_requests"] == 0
    assert duration_of(trace()) == pytest.approx(0.601)


def test_peak_concurrency_half_open() -> None:
    a = _rec(0, 0.0, 0.5, [0.5], 2, 1)
    b = _rec(1, 1.0, 0.5, [], 1, 1)
    assert peak_concurrency([a, b]) == 1


def test_parsers() -> None:
    assert parse_percentiles("50,90,99.9") == (50.0, 90.0, 99.9)
    assert parse_goodput(["ttft:500 tpot:50", "e2el:2000"]) == {"ttft": 500.0, "tpot": 50.0, "e2el": 2000.0}
    assert parse_goodput(["ttft:500,tpot:50"]) == {"ttft": 500.0, "tpot": 50.0}
    with pytest.raises(ValueError):
        parse_goodput(["itl:5"])
    with pytest.raises(ValueError):
        parse_percentiles("150")


def _pooled(index: int, start: float, latency: float, inputs: int, tokens: int, usage: bool = True) -> RequestRecord:
    return RequestRecord(target="t", level="c=1", index=index, start_s=start, done_s=start + latency, success=True,
                         latency=latency, inputs=inputs, prompt_tokens=tokens,
                         prompt_tokens_source="usage" if usage else "estimate")


def test_pooling_metrics_count_inputs_and_only_e2el() -> None:
    records = [_pooled(0, 0.0, 0.1, 4, 40), _pooled(1, 0.05, 0.2, 4, 30, usage=False), _pooled(2, 0.5, 0.3, 4, 20),
               RequestRecord(target="t", level="c=1", index=3, start_s=0.6, done_s=0.7, error="HTTP 500"),
               RequestRecord(target="t", level="c=1", index=4, start_s=0.6, cancelled=True)]
    m = compute_pooling_metrics(records, duration_s=2.0, goodput_ms=parse_goodput(["e2el:250"]))
    assert (m["completed"], m["failed"], m["cancelled"]) == (3, 1, 1)
    assert (m["total_inputs"], m["total_input_tokens"], m["input_tokens_from_usage"]) == (12, 90, 2)
    assert m["request_throughput"] == pytest.approx(1.5) and m["input_throughput"] == pytest.approx(6.0)
    assert m["input_token_throughput"] == pytest.approx(45.0)
    assert m["request_goodput"] == pytest.approx(1.0)
    assert m["max_concurrent_requests"] == 2
    assert m["e2el_ms"]["mean"] == pytest.approx(200) and m["e2el_ms"]["p90"] == pytest.approx(280)
    assert not {"ttft_ms", "tpot_ms", "itl_ms", "total_output_tokens", "output_throughput"} & set(m)


def test_latency_metrics_by_endpoint() -> None:
    assert latency_metrics("chat") == latency_metrics("completions") == ("ttft", "tpot", "itl", "e2el")
    assert latency_metrics("embeddings") == latency_metrics("rerank") == ("e2el",)
    with pytest.raises(ValueError):
        parse_goodput(["ttft:100"], keys=latency_metrics("rerank"))
