"""Changing a running cluster: plan, apply in place and by gated rolling replacement, refusal, rollback, with
simulated engines and a client running throughout."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from tests.cluster import API_KEY, Cluster

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
FAST = {"itl_base_s": 0.002, "prefill_s_per_token": 0.00001}


def spec(models: list[dict[str, Any]], cluster: Cluster) -> None:
    text = yaml.safe_load(cluster.spec_path.read_text())
    text["models"] = models
    cluster.spec_path.write_text(yaml.safe_dump(text))


def modelyard(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelyard", *args, "-f", str(cluster.spec_path)],
                          capture_output=True, text=True, timeout=120, env={**cluster.env, "COLUMNS": "200"})


class Client:
    """Requests one after the other, from a thread, until stopped: every status kept."""

    def __init__(self, cluster: Cluster, model: str) -> None:
        self.cluster, self.model, self.statuses = cluster, model, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                body = {"model": self.model, "prompt": "hi", "max_tokens": 8, "stream": True}
                try:
                    reply = client.post(self.cluster.url + "/v1/completions", json=body, headers=HEADERS)
                    self.statuses.append(reply.status_code if reply.text.rstrip().endswith("[DONE]") else -1)
                except httpx.HTTPError:
                    self.statuses.append(-2)

    def __enter__(self) -> Client:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def engine_pids(cluster: Cluster) -> set[int]:
    return {p.pid for p in cluster.engine_processes() if "modelyard.simulator" in " ".join(p.cmdline())}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    models = [{"name": "chat", "engine": "simulator", "params": FAST, "replicas": 2}]
    running = Cluster(tmp_path, models, gateway={"workers": 2},
                      env={"TEAM_A_KEY": "team-a-secret-" + "y" * 20}).start(timeout_s=60)
    yield running
    running.stop()


def test_plan_apply_in_place_restarts_nothing(cluster: Cluster) -> None:
    assert modelyard(cluster, "plan").returncode == 0
    before = engine_pids(cluster)
    spec([{"name": "chat", "engine": "simulator", "params": FAST, "replicas": 2,
           "admission": {"max_queue": 16}, "routing": "round-robin"}], cluster)
    planned = modelyard(cluster, "plan")
    assert planned.returncode == 2 and "~ change in place model chat" in planned.stdout
    with Client(cluster, "chat") as client:
        applied = modelyard(cluster, "apply", "--yes", "-m", "round robin")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert engine_pids(cluster) == before  # nothing restarted
    assert client.statuses and set(client.statuses) == {200}
    assert modelyard(cluster, "plan").returncode == 0  # the applied revision serves now


def test_a_key_added_in_place_works_at_once_and_nothing_restarts(cluster: Cluster) -> None:
    before = engine_pids(cluster)
    text = yaml.safe_load(cluster.spec_path.read_text())
    text["gateway"]["keys"] = [{"name": "team-a", "key_env": "TEAM_A_KEY"}]
    cluster.spec_path.write_text(yaml.safe_dump(text))
    body = {"model": "chat", "prompt": "hi", "max_tokens": 2}
    team = {"Authorization": f"Bearer {cluster.env['TEAM_A_KEY']}"}
    assert httpx.post(cluster.url + "/v1/completions", json=body, headers=team).status_code == 401
    applied = modelyard(cluster, "apply", "--yes", "-m", "team a")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "gateway.keys" in applied.stdout
    assert httpx.post(cluster.url + "/v1/completions", json=body, headers=team).status_code == 200
    assert engine_pids(cluster) == before


def test_a_rolling_replacement_drops_no_request_and_rollback_restores(cluster: Cluster) -> None:
    before = engine_pids(cluster)
    spec([{"name": "chat", "engine": "simulator", "params": {**FAST, "itl_base_s": 0.003}, "replicas": 2}], cluster)
    with Client(cluster, "chat") as client:
        applied = modelyard(cluster, "apply", "--yes", "-m", "slower decode")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "passed the gate" in applied.stdout
    assert client.statuses and set(client.statuses) == {200}, client.statuses
    after = engine_pids(cluster)
    assert len(after) == 2 and not after & before  # both replicas replaced
    history = modelyard(cluster, "history")
    assert "slower decode" in history.stdout
    with Client(cluster, "chat") as client:
        rolled = modelyard(cluster, "rollback", "--yes")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert set(client.statuses) == {200}
    shown = modelyard(cluster, "history", "--show", "3")
    assert "rollback to 1" in shown.stdout and "itl_base_s: 0.002" in shown.stdout


def test_a_revision_whose_replicas_never_get_ready_is_refused_and_the_old_keeps_serving(cluster: Cluster) -> None:
    before = engine_pids(cluster)
    spec([{"name": "chat", "engine": "simulator", "params": {**FAST, "startup_s": 30}, "startup_timeout_s": 2,
           "replicas": 2}], cluster)
    with Client(cluster, "chat") as client:
        refused = modelyard(cluster, "apply", "--yes")
    assert refused.returncode == 1 and "refused" in refused.stdout
    assert set(client.statuses) == {200}
    assert engine_pids(cluster) == before  # the new replica is gone, the old ones untouched
    assert "refused" in modelyard(cluster, "history").stdout
    bad = modelyard(cluster, "apply", "--yes")  # the file still holds the broken revision: refused again
    assert bad.returncode == 1


def test_concurrent_applies_are_refused_not_interleaved(cluster: Cluster) -> None:
    spec([{"name": "chat", "engine": "simulator", "params": {**FAST, "startup_s": 2}, "replicas": 2}], cluster)
    first = subprocess.Popen([sys.executable, "-m", "modelyard", "apply", "--yes", "-f", str(cluster.spec_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cluster.env)
    try:
        for _ in range(100):
            if any("starting beside" in line for line in cluster.output().splitlines()) or first.poll() is not None:
                break
            psutil.Process().cpu_percent(0.05)
        second = modelyard(cluster, "apply", "--yes")
        assert second.returncode == 1 and "another apply is in progress" in second.stdout
    finally:
        out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out


def test_a_slower_revision_is_refused_by_its_speed_gate(cluster: Cluster) -> None:
    before = engine_pids(cluster)
    slow = {**FAST, "itl_base_s": 0.05}
    gate = {"speed": {"max_slowdown": 0.5, "requests": 8, "concurrency": 2, "max_tokens": 8}}
    spec([{"name": "chat", "engine": "simulator", "params": slow, "replicas": 2, "validation": gate}], cluster)
    refused = modelyard(cluster, "apply", "--yes")
    assert refused.returncode == 1 and "gate failed" in refused.stdout
    assert engine_pids(cluster) == before
    shown = modelyard(cluster, "history", "--show", "2")
    assert '"speed"' in shown.stdout and '"passed":false' in shown.stdout.replace(" ", "")
