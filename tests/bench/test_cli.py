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

from .conftest import API_KEY, CHUNKS, PROMPT_TOKENS, PoolingServer


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


STREAMED_LABELS = ("TTFT", "TPOT", "ITL", "Output tokens", "Output token throughput", "Peak output tokens/s")


def test_embeddings_side_by_side(pooling_server: PoolingServer, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_TEST_KEY", API_KEY)
    monkeypatch.setenv("COLUMNS", "200")
    out, base = tmp_path / "emb", pooling_server.url
    args = ["--target", f"direct={base}/nousage/v1", "--target", f"gateway={base}/v1@BENCH_TEST_KEY",
            "--endpoint", "embeddings", "--batch", "4", "--dataset", "random", "--input-len", "5",
            "--concurrency", "1,2", "--num-requests", "6", "--warmup", "1", "--goodput", "e2el:10000",
            "--output-dir", str(out), "--no-progress"]
    result = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "embeddings, batch 4, c=1" in result.output and "gateway / direct" in result.output
    for label in ("Texts embedded", "Embedding throughput (texts/s)", "Input token throughput", "E2EL p99 (ms)"):
        assert label in result.output
    assert not any(label in result.output for label in STREAMED_LABELS)

    assert len(pooling_server.bodies) == 2 * (1 + 2 * 6)
    for body in pooling_server.bodies:
        assert set(body) == {"model", "input"} and len(body["input"]) == 4
        assert all(len(text.split()) == 5 for text in body["input"])
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["endpoint"] == "embeddings" and doc["config"]["batch"] == 4
    for run in doc["runs"]:
        direct, gateway = run["targets"]["direct"], run["targets"]["gateway"]
        for m in (direct, gateway):
            assert (m["completed"], m["failed"], m["total_inputs"]) == (6, 0, 24)
            assert m["request_goodput"] == pytest.approx(m["request_throughput"])
            assert m["input_throughput"] == pytest.approx(4 * m["request_throughput"])
            assert set(m["e2el_ms"]) == {"mean", "median", "std", "p50", "p90", "p99"}
            assert not {"ttft_ms", "tpot_ms", "itl_ms", "total_output_tokens"} & set(m)
        assert gateway["input_tokens_from_usage"] == 6 and direct["input_tokens_from_usage"] == 0
        assert gateway["total_input_tokens"] == 6 * 4 * 5
    assert any("direct: 6 response(s) had no usage" in w for w in doc["warnings"])
    assert all(r["inputs"] == 4 and "ttft_ms" not in r and "itl_ms" not in r for r in doc["requests"])

    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert len(summary) == 4 and "e2el_p99_ms" in summary[0] and "input_throughput" in summary[0]
    assert not [k for k in summary[0] if k.startswith(("ttft", "tpot", "itl", "output"))]
    requests = list(csv.DictReader((out / "requests.csv").open()))
    assert len(requests) == 24 and "ttft_ms" not in requests[0] and requests[0]["inputs"] == "4"
    for png in ("latency.png", "throughput.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerank_counts_documents_and_failures(pooling_server: PoolingServer, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "rr"
    args = ["--target", f"{pooling_server.url}/failing/v1", "--endpoint", "rerank", "--documents", "3",
            "--rate", "inf", "--num-requests", "6", "--warmup", "0", "--output-dir", str(out), "--no-plots",
            "--no-progress"]
    result = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Documents scored" in result.output and "Rerank throughput (docs/s)" in result.output
    assert not any(label in result.output for label in STREAMED_LABELS)
    bodies = pooling_server.bodies
    assert len(bodies) == 6
    assert all(isinstance(b["query"], str) and len(b["documents"]) == 3 for b in bodies)
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["documents"] == 3
    m = next(iter(doc["runs"][0]["targets"].values()))
    assert (m["completed"], m["failed"], m["cancelled"], m["total_inputs"]) == (3, 3, 0, 9)
    failed = [r for r in doc["requests"] if not r["success"]]
    assert len(failed) == 3 and all(r["status"] == 500 and r["inputs"] == 0 for r in failed)
    assert any("3 request(s) failed" in w for w in doc["warnings"])


def test_answer_with_too_few_embeddings_fails(pooling_server: PoolingServer, tmp_path: Path) -> None:
    out = tmp_path / "short"
    args = ["--target", f"{pooling_server.url}/short/v1", "--endpoint", "embeddings", "--batch", "2",
            "--num-requests", "3", "--warmup", "0", "--output-dir", str(out), "--no-plots", "--no-progress"]
    result = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    m = next(iter(doc["runs"][0]["targets"].values()))
    assert (m["completed"], m["failed"], m["total_inputs"]) == (0, 3, 0)
    assert all("expected 2 item(s) in 'data', got 1" in r["error"] for r in doc["requests"])


@pytest.mark.parametrize("extra", [["--batch", "4"], ["--endpoint", "rerank", "--batch", "4"],
                                   ["--endpoint", "embeddings", "--documents", "4"],
                                   ["--endpoint", "embeddings", "--goodput", "ttft:100"]])
def test_pooling_flags_are_checked(extra: list[str]) -> None:
    result = CliRunner().invoke(bench, ["--target", "http://h/v1", *extra])
    assert result.exit_code == 2, result.output
