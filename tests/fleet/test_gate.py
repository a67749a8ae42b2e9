"""The gate's checks against in-process simulators (no timing is asserted: a simulator answers the same text for
the same prompt, so what the checks report is fixed)."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelyard.cli import main
from modelyard.fleet.gate import NONE_CONFIGURED, GateReport, _speed_problems, identical_share, run_gate
from modelyard.fleet.process import free_port
from modelyard.simulator.profiles import resolve_profile
from modelyard.simulator.run import SimulatorThread
from modelyard.spec.schema import SimulatorModel
from modelyard.spec.validation import SpeedSpec

FAST = {"itl_base_s": 0.001, "prefill_overhead_s": 0.0, "prefill_s_per_token": 0.0}
GOLDEN = """\
- {name: filler, prompt: "Tell me about foxes.", expect: {contains: "fox"}}
- {name: capital, prompt: "What is the capital of France?", expect: {exact: "Paris"}}
"""


def simulator(task: str = "chat", **params: float | int | str) -> SimulatorThread:
    return SimulatorThread(resolve_profile("tiny-cpu", {**FAST, "task": task, **params}), "sim")


@pytest.fixture
def sims() -> Iterator[list[SimulatorThread]]:
    with simulator() as a, simulator() as b, simulator() as c:
        yield [a, b, c]


def model(validation: dict[str, Any] | None, task: str = "chat") -> SimulatorModel:
    return SimulatorModel.model_validate({"name": "sim", "engine": "simulator", "task": task,
                                          "validation": validation})


def golden(tmp_path: Path, text: str = GOLDEN, name: str = "golden.yaml") -> str:
    (tmp_path / name).write_text(textwrap.dedent(text))
    return name


def gate(spec: SimulatorModel, tmp_path: Path, candidates: list[str], serving: list[str] | None = None) -> GateReport:
    return asyncio.run(run_gate(spec, tmp_path, candidates, serving or []))


def test_no_gate_configured_passes_with_a_check_saying_so(tmp_path: Path) -> None:
    for validation in (None, {}):
        report = gate(model(validation), tmp_path, ["http://127.0.0.1:1"])
        assert report.passed and [c.name for c in report.checks] == [NONE_CONFIGURED]


def test_quality_passes_when_every_entry_passes_on_every_candidate(tmp_path: Path,
                                                                  sims: list[SimulatorThread]) -> None:
    path = golden(tmp_path, "- {prompt: 'Tell me about foxes.', expect: {contains: fox, not_contains: Paris}}\n")
    report = gate(model({"quality": {"golden": path}}), tmp_path, [sims[0].url, sims[1].url])
    check = report.checks[0]
    assert report.passed and check.name == "quality" and check.passed
    assert (check.details["passed"], check.details["total"], check.details["pass_rate"]) == (2, 2, 1.0)
    assert {row["replica"] for row in check.details["results"]} == {sims[0].url, sims[1].url}
    assert check.summary == "2/2 answers pass (100%; needs 100%)"


def test_quality_fails_under_its_pass_rate_and_says_why(tmp_path: Path, sims: list[SimulatorThread]) -> None:
    strict = gate(model({"quality": {"golden": golden(tmp_path)}}), tmp_path, [sims[0].url])
    assert not strict.passed
    check = strict.checks[0]
    assert check.details["pass_rate"] == 0.5
    [failure] = check.details["failures"]
    assert failure["entry"] == 1 and failure["label"] == "capital" and failure["reason"].startswith("exact:")
    assert failure["answer"]  # what the replica said, to read in the report
    lenient = gate(model({"quality": {"golden": "golden.yaml", "min_pass_rate": 0.5}}), tmp_path, [sims[0].url])
    assert lenient.passed


def test_a_golden_set_that_does_not_load_fails_the_check_and_never_raises(tmp_path: Path) -> None:
    path = golden(tmp_path, "- {prompt: hi, expect: {colour: blue}}\n")
    report = gate(model({"quality": {"golden": path}}), tmp_path, ["http://127.0.0.1:1"])
    check = report.checks[0]
    assert not report.passed and not check.passed
    assert "entries[0].expect.colour: unknown check" in check.summary and check.details["errors"]
    missing = gate(model({"quality": {"golden": "nope.yaml"}}), tmp_path, ["http://127.0.0.1:1"])
    assert "no such golden file" in missing.checks[0].summary


def test_a_candidate_that_fails_fails_each_check_with_the_reason(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    validation = {"quality": {"golden": golden(tmp_path)}, "determinism": {"prompts": 2},
                  "speed": {"requests": 2}}
    report = gate(model(validation), tmp_path, [dead])
    assert not report.passed and [c.name for c in report.checks] == ["quality", "determinism", "speed"]
    for check in report.checks:
        assert not check.passed and check.summary.startswith(f"a candidate failed: {dead}")


def test_error_answers_fail_the_check(tmp_path: Path) -> None:
    with simulator(failure_rate=1.0, failure_kinds="500") as broken:
        report = gate(model({"quality": {"golden": golden(tmp_path)}}), tmp_path, [broken.url])
    assert not report.passed and "answered 500" in report.checks[0].summary


def test_determinism_reports_the_share_of_identical_answers_per_prompt(tmp_path: Path,
                                                                      sims: list[SimulatorThread]) -> None:
    validation = {"quality": {"golden": golden(tmp_path)},
                  "determinism": {"prompts": 3, "repeats": 2, "concurrent": 3, "max_tokens": 8}}
    report = gate(model(validation), tmp_path, [sims[0].url, sims[1].url], [sims[2].url])
    check = report.checks[1]
    assert check.name == "determinism" and check.passed
    details = check.details
    assert (details["prompts"], details["repeats"], details["concurrent"]) == (3, 2, 3)
    assert details["replicas"] == [sims[0].url, sims[1].url, sims[2].url]
    assert set(details["phases"]) == {"alone", "concurrent", "replicas"}
    assert details["identical"] == {"min": 1.0, "mean": 1.0}  # a simulator's answer is fixed by its prompt
    # the golden set's prompts first, then the built-in ones
    assert [row["prompt"] for row in details["per_prompt"]] == ["filler", "capital", "What is the capital of France?"]
    for row in details["per_prompt"]:
        assert row["answers"] == 2 + 3 + 3 and row["distinct"] == 1 and row["most_common"]
        assert set(row) == {"prompt", "answers", "distinct", "identical", "alone", "concurrent", "replicas",
                            "most_common"}
    assert details["serving_errors"] == []


def test_determinism_notes_a_serving_replica_that_fails_but_judges_the_candidates(tmp_path: Path,
                                                                                 sims: list[SimulatorThread]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    report = gate(model({"determinism": {"prompts": 2, "repeats": 2, "concurrent": 2}}), tmp_path, [sims[0].url],
                  [dead])
    check = report.checks[0]
    assert check.passed and len(check.details["serving_errors"]) == 2
    assert "request(s) to the serving replicas failed" in check.summary


def test_identical_share() -> None:
    assert identical_share(["a", "a", "b", "a"]) == 0.75
    assert identical_share(["a", "b"]) == 0.5
    assert identical_share([]) == 1.0


def test_speed_measures_candidates_and_serving_in_one_run(tmp_path: Path, sims: list[SimulatorThread]) -> None:
    report = gate(model({"speed": {"requests": 4, "concurrency": 2, "max_tokens": 4}}), tmp_path,
                  [sims[0].url], [sims[1].url])
    check = report.checks[0]
    assert check.name == "speed" and check.passed  # no SLO and no max_slowdown: measured only
    for side in ("candidate", "serving"):
        measured = check.details[side]
        assert measured["requests"] == measured["ok"] == 4 and measured["errors"] == []
        assert measured["ttft_p90_s"] is not None and measured["tpot_p90_s"] is not None
    assert check.summary.startswith("TTFT p90 ") and "(serving " in check.summary


def test_speed_fails_over_the_slo(tmp_path: Path) -> None:
    with simulator(prefill_overhead_s=0.3) as slow:  # a TTFT of at least 0.3 s, whatever the machine
        report = gate(model({"speed": {"ttft_p90_s": 0.01, "requests": 2, "max_tokens": 2}}), tmp_path, [slow.url])
    assert not report.passed and "ttft_p90_s" in report.checks[0].summary and "over the SLO" in report.checks[0].summary


def test_speed_against_the_serving_revision() -> None:
    spec = SpeedSpec(max_slowdown=0.1)
    serving = {"ttft_p90_s": 1.0, "tpot_p90_s": 0.1, "errors": []}
    assert _speed_problems("chat", spec, {"ttft_p90_s": 1.05, "tpot_p90_s": 0.11}, serving) == []
    problems = _speed_problems("chat", spec, {"ttft_p90_s": 1.2, "tpot_p90_s": 0.1}, serving)
    assert problems == ["ttft_p90_s 1.200 s is more than 10% over the serving revision's 1.000 s"]
    assert _speed_problems("chat", spec, {"ttft_p90_s": 9.0, "tpot_p90_s": 9.0}, {**serving, "errors": ["x"]}) == []
    slo = SpeedSpec(tpot_p90_s=0.05)
    assert _speed_problems("chat", slo, {"ttft_p90_s": 1.0, "tpot_p90_s": None}, None) == [
        "tpot_p90_s n/a is over the SLO 0.05 s"]
    assert _speed_problems("embedding", SpeedSpec(ttft_p90_s=0.5), {"latency_p90_s": 0.6}, None) == [
        "latency_p90_s 0.600 s is over the SLO 0.5 s"]


def test_embedding_models(tmp_path: Path) -> None:
    path = golden(tmp_path, """\
        - {pair: ["the cat sat on the mat", "the cat sat on a mat"], closer_than: ["the cat", "stock markets fell"]}
        - {pair: ["stock markets fell", "zebra"], closer_than: ["the cat sat on the mat", "the cat sat on a mat"]}
        """)
    validation = {"quality": {"golden": path}, "determinism": {"prompts": 2, "repeats": 2, "concurrent": 2},
                  "speed": {"requests": 3}}
    with simulator("embedding") as a, simulator("embedding") as b:
        report = gate(model(validation, "embedding"), tmp_path, [a.url], [b.url])
    quality, determinism, speed = report.checks
    assert quality.details["pass_rate"] == 0.5 and quality.details["failures"][0]["entry"] == 1
    assert "cosine(pair)" in quality.details["failures"][0]["reason"]
    assert determinism.passed and determinism.details["identical"]["min"] == 1.0
    assert determinism.details["per_prompt"][0]["min_cosine"] == pytest.approx(1.0)
    assert speed.passed and speed.details["candidate"]["latency_p90_s"] is not None


def test_rerank_models(tmp_path: Path) -> None:
    path = golden(tmp_path, """\
        {"query": "what do cats eat", "documents": ["dogs bark", "cats eat fish", "rain"], "top": 1}
        {"query": "what do cats eat", "documents": ["dogs bark", "cats eat fish"], "top": 0}
        """, name="rerank.jsonl")
    with simulator("rerank") as a:
        report = gate(model({"quality": {"golden": path}, "determinism": {"prompts": 2}}, "rerank"), tmp_path, [a.url])
    quality, determinism = report.checks
    assert quality.details["passed"] == 1 and quality.details["failures"][0]["reason"] == ("the top document is 1, "
                                                                                          "not 0")
    assert determinism.passed


def test_the_report_is_json_and_reads_back(tmp_path: Path, sims: list[SimulatorThread]) -> None:
    report = gate(model({"quality": {"golden": golden(tmp_path)}, "determinism": {"prompts": 1}}), tmp_path,
                  [sims[0].url])
    data = json.loads(json.dumps(report.as_dict()))
    assert data["passed"] is False and [c["name"] for c in data["checks"]] == ["quality", "determinism"]
    assert GateReport.from_dict(data) == report
    lines = report.summary().splitlines()
    assert lines[0] == "gate: FAILED" and lines[1].startswith("  quality: FAILED: 1/2 answers pass")
    assert lines[2].startswith("  determinism: ok: identical answers per prompt: mean 100%")


def yard(tmp_path: Path, validation: str, task: str = "chat") -> str:
    path = tmp_path / "yard.yaml"
    path.write_text(f"models:\n  - {{name: sim, engine: simulator, task: {task}, validation: {validation}}}\n")
    return str(path)


def test_the_command_exits_0_on_pass_and_1_on_fail(tmp_path: Path, sims: list[SimulatorThread]) -> None:
    golden(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(main, ["gate", "-f", yard(tmp_path, "{quality: {golden: golden.yaml, min_pass_rate: 0.5}}"),
                              "sim", "--url", sims[0].url + "/v1", "--against", sims[1].url])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("sim: gate: passed\n  quality: ok: 1/2 answers pass")
    failed = runner.invoke(main, ["gate", "-f", yard(tmp_path, "{quality: {golden: golden.yaml}}"), "sim",
                                  "--url", sims[0].url, "--json"])
    assert failed.exit_code == 1
    assert json.loads(failed.output)["checks"][0]["details"]["failures"][0]["label"] == "capital"


def test_the_command_exits_2_on_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELYARD_API_KEY", raising=False)
    golden(tmp_path, "- {prompt: hi, expect: {colour: blue}}\n", name="bad.yaml")
    runner = CliRunner()
    spec = yard(tmp_path, "{quality: {golden: bad.yaml}}")
    unknown = runner.invoke(main, ["gate", "-f", spec, "other", "--url", "http://127.0.0.1:1"])
    assert unknown.exit_code == 2 and "has no model 'other'" in unknown.output
    bad = runner.invoke(main, ["gate", "-f", spec, "sim", "--url", "http://127.0.0.1:1"])
    assert bad.exit_code == 2 and "entries[0].expect.colour: unknown check" in bad.output
    no_key = runner.invoke(main, ["gate", "-f", yard(tmp_path, "{determinism: {}}"), "sim"])
    assert no_key.exit_code == 2 and "MODELYARD_API_KEY" in no_key.output
    assert runner.invoke(main, ["gate", "-f", spec]).exit_code == 2  # no MODEL
