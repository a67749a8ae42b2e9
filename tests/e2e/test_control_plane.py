"""The control plane end to end with simulated engines: scale from zero holding the request, scale-down draining
a stream, a pool that swaps members under concurrent requests, and the resource budget."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.cluster import API_KEY, Cluster

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
FAST = {"itl_base_s": 0.002, "prefill_s_per_token": 0.00001}


def complete(cluster: Cluster, model: str, max_tokens: int = 4, stream: bool = False,
             timeout: float = 60) -> httpx.Response:
    body = {"model": model, "prompt": "hello there", "max_tokens": max_tokens, "stream": stream}
    return httpx.post(cluster.url + "/v1/completions", json=body, headers=HEADERS, timeout=timeout)


def health(cluster: Cluster) -> dict[str, Any]:
    models: dict[str, Any] = httpx.get(cluster.url + "/health", timeout=5).json()["models"]
    return models


def wait_for(condition: Any, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_a_model_at_zero_holds_the_request_while_a_replica_starts_then_goes_back_to_zero(tmp_path: Path) -> None:
    model = {"name": "lazy", "engine": "simulator", "params": {**FAST, "startup_s": 1.0},
             "replicas": {"min": 0, "max": 2, "scale_to_zero_after_s": 2, "scale_down_delay_s": 0.5,
                          "cold_start_timeout_s": 60}}
    cluster = Cluster(tmp_path, [model], gateway={"workers": 2}).start(timeout_s=30)
    try:
        assert health(cluster)["lazy"] == {"ready": 0, "replicas": 0, "strategy": "autoscaled"}
        started = time.monotonic()
        reply = complete(cluster, "lazy")
        assert reply.status_code == 200 and reply.json()["choices"]
        assert time.monotonic() - started >= 1.0  # it waited for the start, not an error
        assert health(cluster)["lazy"]["ready"] == 1
        assert wait_for(lambda: health(cluster)["lazy"] == {"ready": 0, "replicas": 0, "strategy": "autoscaled"})
        assert wait_for(lambda: all(f"lazy: scale {s}" in cluster.output() for s in ("0 -> 1", "1 -> 0")), 5)
    finally:
        cluster.stop()


def test_scale_up_under_load_and_down_after_it_without_cutting_a_stream(tmp_path: Path) -> None:
    model = {"name": "busy", "engine": "simulator", "params": {"itl_base_s": 0.02},
             "replicas": {"min": 1, "max": 3, "target_in_flight": 1, "scale_down_delay_s": 0.5,
                          "stable_window_s": 2, "panic_window_s": 1}}
    cluster = Cluster(tmp_path, [model], gateway={"workers": 1}).start(timeout_s=30)
    try:
        results: list[httpx.Response] = []

        def stream(tokens: int) -> None:
            results.append(complete(cluster, "busy", max_tokens=tokens, stream=True))

        threads = [threading.Thread(target=stream, args=(tokens,)) for tokens in (300, 40, 40)]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: health(cluster)["busy"]["replicas"] >= 2, 20)
        for thread in threads:
            thread.join(60)
        assert [r.status_code for r in results] == [200, 200, 200]
        assert all(r.text.rstrip().endswith("data: [DONE]") for r in results)  # none cut by the scale-down
        assert wait_for(lambda: health(cluster)["busy"]["replicas"] == 1, 30)
        assert wait_for(lambda: "busy: scale 1 -> " in cluster.output() and " -> 1:" in cluster.output(), 5)
    finally:
        cluster.stop()


def test_a_pool_swaps_its_members_under_concurrent_requests_and_loses_none(tmp_path: Path) -> None:
    params = {**FAST, "wake_level1_s": 0.3}
    models = [{"name": f"m{i}", "engine": "simulator", "params": params} for i in range(3)]
    pool = {"name": "shared", "slots": 1, "members": ["m0", "m1", "m2"], "min_awake_s": 0}
    cluster = Cluster(tmp_path, models, gateway={"workers": 2}, extra={"pools": [pool]}).start(timeout_s=30)
    try:
        assert {name: m["ready"] for name, m in health(cluster).items()} == {"m0": 1, "m1": 0, "m2": 0}
        statuses: list[int] = []

        def client(order: list[str]) -> None:
            for name in order:
                statuses.append(complete(cluster, name).status_code)

        resident: list[int] = []  # members holding the pool's slot (serving, starting, waking or draining)
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                resident.append(sum(m["ready"] + sum(m.get(k, 0) for k in ("starting", "waking", "draining"))
                                    for m in health(cluster).values()))
                time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(order,))
                   for order in (["m1", "m2", "m0"], ["m2", "m0", "m1"], ["m0", "m1", "m2"])]
        watcher = threading.Thread(target=watch)
        for thread in (*threads, watcher):
            thread.start()
        for thread in threads:
            thread.join(120)
        done.set()
        watcher.join(10)
        assert statuses == [200] * 9
        assert resident and max(resident) == 1  # one slot: never two members at once, not even during a swap
        output = cluster.output()
        assert "m1: start" in output or "m1: wake" in output
        assert ": sleep " in output  # a member made room
        assert sum(m["ready"] for m in health(cluster).values()) <= 1  # never more awake than the pool's slots
    finally:
        cluster.stop()


def test_the_resource_budget_is_never_exceeded(tmp_path: Path) -> None:
    model = {"name": "big", "engine": "simulator", "params": {"itl_base_s": 0.02}, "memory_gib": 10,
             "replicas": {"min": 1, "max": 4, "target_in_flight": 1, "panic_window_s": 1, "stable_window_s": 2}}
    cluster = Cluster(tmp_path, [model], gateway={"workers": 1}, extra={"resources": {"memory_gib": 20}})
    cluster.start(timeout_s=30)
    try:
        seen: list[int] = []
        threads = [threading.Thread(target=complete, args=(cluster, "big", 150, True)) for _ in range(6)]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: seen.append(health(cluster)["big"]["replicas"]) or "big: held" in cluster.output())
        for thread in threads:
            thread.join(60)
        assert max(seen) == 2  # 20 GiB of 10 GiB replicas
        assert wait_for(lambda: "beyond resources.memory_gib 20" in cluster.output(), 5)
    finally:
        cluster.stop()


def test_a_ttft_over_the_slo_adds_a_replica(tmp_path: Path) -> None:
    """The load alone would not scale (target 100 per replica): the TTFT that clients see, over the SLO, does."""
    model = {"name": "slow", "engine": "simulator", "params": {"itl_base_s": 0.002, "prefill_overhead_s": 0.3},
             "replicas": {"min": 1, "max": 2, "target_in_flight": 100}, "slo": {"ttft_p90_s": 0.1}}
    cluster = Cluster(tmp_path, [model], gateway={"workers": 1}).start(timeout_s=30)
    try:
        for _ in range(4):
            assert complete(cluster, "slow", stream=True).status_code == 200
        assert wait_for(lambda: health(cluster)["slow"]["replicas"] == 2, 20)
        assert wait_for(lambda: "over SLO 0.1 s: +1" in cluster.output(), 5)  # the screen prints it soon after
        assert cluster.metric("modelyard_replicas_desired", model="slow") == 2
        assert cluster.metric("modelyard_control_decisions", model="slow", action="scale") >= 1
    finally:
        cluster.stop()


def test_status_shows_each_models_strategy_and_replicas(tmp_path: Path) -> None:
    import subprocess
    import sys

    models = [{"name": "lazy", "engine": "simulator", "params": FAST, "replicas": {"min": 0, "max": 2}},
              {"name": "fixed", "engine": "simulator", "params": FAST}]
    cluster = Cluster(tmp_path, models, gateway={"workers": 1}).start(timeout_s=30)
    try:
        out = subprocess.run([sys.executable, "-m", "modelyard", "status", "-f", str(cluster.spec_path)],
                             capture_output=True, text=True, timeout=30, env={**cluster.env, "COLUMNS": "200"})
        assert out.returncode == 0, out.stderr
        rows = {line.split()[1]: line.split()[3:7] for line in out.stdout.splitlines()
                if line.startswith("│") and line.split()[1] in ("lazy", "fixed")}
        assert rows == {"fixed": ["fixed", "│", "1", "│"], "lazy": ["autoscaled", "│", "0", "│"]}
        as_json = subprocess.run([sys.executable, "-m", "modelyard", "status", "--json", "--url", cluster.url],
                                 capture_output=True, text=True, timeout=30)
        assert '"strategy": "autoscaled"' in as_json.stdout
    finally:
        cluster.stop()
    gone = subprocess.run([sys.executable, "-m", "modelyard", "status", "--url", cluster.url],
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 2 and "no cluster answers" in gone.stdout


def test_a_full_kv_cache_adds_a_replica(tmp_path: Path) -> None:
    """The load alone would not scale: the KV cache usage the workers' scrapers read does."""
    model = {"name": "kv", "engine": "simulator", "params": {"itl_base_s": 0.02, "kv_blocks": 8, "block_size": 16},
             "replicas": {"min": 1, "max": 2, "target_in_flight": 100}}
    cluster = Cluster(tmp_path, [model], gateway={"workers": 1}).start(timeout_s=30)
    done = threading.Event()

    def fill() -> None:  # one request at a time keeps the tiny cache full (a request alone is not enough load)
        while not done.is_set():
            complete(cluster, "kv", 120, True)

    thread = threading.Thread(target=fill)
    try:
        thread.start()
        assert wait_for(lambda: health(cluster)["kv"]["replicas"] == 2, 30)
        assert wait_for(lambda: "KV cache" in cluster.output(), 5)
    finally:
        done.set()
        thread.join(60)
        cluster.stop()
