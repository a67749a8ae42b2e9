from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelyard.bench import datasets
from modelyard.bench.cli import bench
from modelyard.bench.load import LoadLevel
from modelyard.bench.runner import BenchConfig, run_bench
from modelyard.bench.targets import Target

from .conftest import API_KEY, CHUNKS, PROMPT_TOKENS


def test_side_by_side_sweep_writes_everything(sse_server: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_TEST_KEY", API_KEY)
    out = tmp_path / "out"
    args = ["--target", f"usage={sse_server}/v1@BENCH_TEST_KEY", "--target", f"nousage={sse_server}/nousage/v1",
            "--concurrency", "1,3", "--num-requests", "6", "--warmup", "1", "--goodput", "ttft:10000,e2el:10000",
            "--percentiles", "50,99", "--output-dir", str(out), "--no-progress"]
    result = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "nousage / usage" in result.output

    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["targets"][0]["model"] == "fake-model"
    assert doc["warmup_requests"] == 2 and doc["warmup_failed"] == 0
    assert [r["level"] for r in doc["runs"]] == ["c=1", "c=3"]
    assert len(doc["requests"]) == 2 * 2 * 6
    for run in doc["runs"]:
        with_usage, without = run["targets"]["usage"], run["targets"]["nousage"]
        for m in (with_usage, without):
            assert (m["completed"], m["failed"]) == (6, 0)
            assert m["total_output_tokens"] == 6 * CHUNKS
            assert m["request_goodput"] == pytest.approx(m["request_throughput"])
            assert set(m["ttft_ms"]) == {"mean", "median", "std", "p50", "p99"}
        assert with_usage["total_input_tokens"] == 6 * PROMPT_TOKENS
        assert with_usage["output_tokens_from_usage"] == 6 and without["output_tokens_from_usage"] == 0
        assert 1 <= with_usage["max_concurrent_requests"] <= (run["concurrency"])
        assert "client_cpu_pct" in run["client"]
    assert all(len(r["itl_ms"]) == CHUNKS - 1 for r in doc["requests"])
    assert any("had no usage" in w for w in doc["warnings"])

    rows = list(csv.DictReader((out / "requests.csv").open()))
    assert len(rows) == 24 and {r["target"] for r in rows} == {"usage", "nousage"}
    assert len(list(csv.DictReader((out / "summary.csv").open()))) == 4
    for png in ("latency.png", "throughput.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_open_loop_completions(sse_server: str, tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["--target", f"{sse_server}/nousage/v1", "--endpoint", "completions", "--rate", "50,inf",
            "--burstiness", "0.5", "--num-requests", "5", "--warmup", "0", "--dataset", "random", "--input-len", "8",
            "--output-dir", str(out), "--no-plots", "--no-progress"]
    result = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert [r["level"] for r in doc["runs"]] == ["rate=50", "rate=inf"]
    assert all(m["completed"] == 5 for r in doc["runs"] for m in r["targets"].values())
    assert not (out / "latency.png").exists()


def test_time_bound_stops_sending(slow_sse_server: str) -> None:
    """1000 requests of ~0.25 s each at concurrency 2 cannot finish within the 0.3 s bound."""
    target = Target("slow", f"{slow_sse_server}/nousage/v1", model="fake-model")
    config = BenchConfig(targets=(target,), levels=(LoadLevel(concurrency=2),),
                         prompts=tuple(datasets.cycle(datasets.mtbench(), 1000)), max_duration=0.3, drain_s=0.0)
    result = asyncio.run(run_bench(config))
    records = result.levels[0].records
    m = result.levels[0].metrics["slow"]
    assert len(records) < 1000
    assert m["completed"] + m["failed"] + m["cancelled"] == len(records)


def test_unreachable_target_is_a_clean_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(bench, ["--target", "http://127.0.0.1:9/v1", "--no-progress", "--output-dir",
                                        str(tmp_path)])
    assert result.exit_code != 0 and "cannot reach" in result.output


def test_bad_flags_are_usage_errors() -> None:
    result = CliRunner().invoke(bench, ["--target", "http://h/v1", "--goodput", "foo:1"])
    assert result.exit_code == 2 and "--goodput" in result.output


def test_alternate_sends_to_one_target_at_a_time(sse_server: str, tmp_path: Path) -> None:
    out = tmp_path / "alt"
    args = ["--target", f"a={sse_server}/nousage/v1", "--target", f"b={sse_server}/nousage/v1", "--alternate",
            "--num-requests", "4", "--warmup", "0", "--output-dir", str(out), "--no-plots", "--no-progress"]
    result = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    requests = sorted(json.loads((out / "results.json").read_text())["requests"], key=lambda r: r["start_s"])
    assert [r["target"] for r in requests] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    for earlier, later in zip(requests, requests[1:], strict=False):
        assert earlier["done_s"] <= later["start_s"]  # never two in flight at once
