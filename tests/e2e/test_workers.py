"""`gateway.workers: 2` through `modelyard up`: one port served by two processes, limits exact across them."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.cluster import API_KEY, Cluster

ADMIN = "admin-" + "z" * 24
WORKER_HEADER = "x-modelyard-worker"


def sim(name: str = "chat") -> dict[str, Any]:
    return {"name": name, "engine": "simulator", "profile": "tiny-cpu",
            "params": {"itl_base_s": 0.002, "prefill_overhead_s": 0.001}}


def complete(cluster: Cluster, key: str = API_KEY) -> httpx.Response:
    """One request on a connection of its own, so the kernel may hand it to either worker."""
    return httpx.post(cluster.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": "chat", "prompt": "hello", "max_tokens": 3})


def worker_processes(cluster: Cluster) -> list[psutil.Process]:
    return [p for p in cluster.engine_processes() if "modelyard.gateway.workers" in " ".join(p.cmdline())]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path, [sim()], gateway={"workers": 2}, env={"MODELYARD_ADMIN_KEY": ADMIN}).start()
    yield running
    running.stop()


def test_requests_spread_over_both_workers_and_metrics_add_up(cluster: Cluster) -> None:
    replies = [complete(cluster) for _ in range(30)]
    assert [r.status_code for r in replies] == [200] * 30
    served_by = {int(r.headers[WORKER_HEADER]) for r in replies}
    assert served_by == {p.pid for p in worker_processes(cluster)}
    assert len(served_by) == 2
    for _ in range(4):  # whichever worker answers /metrics counts the other's requests too
        assert cluster.metric("modelyard_requests_total", model="chat", key="env", status="200") == 30


def test_an_rpm_limit_is_exact_across_workers(cluster: Cluster) -> None:
    created = httpx.post(cluster.url + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN}"},
                         json={"name": "team", "rpm": 7}, timeout=10)
    assert created.status_code == 201, created.text
    key = created.json()["secret"]
    replies = [complete(cluster, key) for _ in range(30)]  # each worker served some: all but 2 in 2^30 runs
    assert sorted(r.status_code for r in replies) == [200] * 7 + [429] * 23
    assert len({r.headers[WORKER_HEADER] for r in replies}) == 2
    assert cluster.metric("modelyard_rejections_total", model="chat", key="team", reason="rpm") == 23


def test_a_killed_worker_is_restarted(cluster: Cluster) -> None:
    before = worker_processes(cluster)
    assert len(before) == 2
    assert {int(complete(cluster).headers[WORKER_HEADER]) for _ in range(30)} == {p.pid for p in before}
    before[0].kill()
    answered: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(answered - {before[0].pid}) < 2:
        try:
            reply = complete(cluster)
        except httpx.TransportError:
            continue  # a connection the killed worker's socket had taken when it died
        if reply.status_code == 200:
            answered.add(int(reply.headers[WORKER_HEADER]))
        time.sleep(0.05)
    pids = {p.pid for p in worker_processes(cluster) if p.status() != psutil.STATUS_ZOMBIE}
    assert len(answered - {before[0].pid}) == 2, cluster.output()
    assert before[0].pid not in pids and answered - {before[0].pid} == pids
    assert [complete(cluster).status_code for _ in range(10)] == [200] * 10
    assert "gateway worker 0 exited" in (cluster.tmp / "state" / "logs" / "modelyard.log").read_text()


def test_ctrl_c_leaves_no_process(cluster: Cluster) -> None:
    assert cluster.proc is not None
    children = cluster.engine_processes()
    kinds = " ".join(" ".join(p.cmdline()) for p in children)
    assert "modelyard.gateway.workers" in kinds and "redis-server" in kinds and "modelyard.simulator" in kinds
    cluster.proc.send_signal(signal.SIGINT)
    assert cluster.proc.wait(30) == 0
    alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_a_killed_up_takes_its_workers_and_redis_along(cluster: Cluster) -> None:
    assert cluster.proc is not None
    children = cluster.engine_processes()
    assert len(children) == 4  # two workers, the private redis, one replica
    cluster.proc.kill()
    cluster.proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.1)
    assert alive == []


def test_an_ejection_in_one_worker_holds_in_every_worker(tmp_path: Path) -> None:
    from tests.upstream import Upstream

    with Upstream() as bad, Upstream() as good:
        model = {"name": "chat", "engine": "openai", "urls": [bad.url, good.url], "replicas": 2}
        running = Cluster(tmp_path, [model], gateway={"workers": 2}).start()
        try:
            assert len({complete(running).headers[WORKER_HEADER] for _ in range(30)}) == 2
            bad.mode, bad.probes_ok = "error503", False
            deadline = time.monotonic() + 30
            for _ in range(100):  # until one worker has seen 3 failures in a row and ejected it
                complete(running)
                if running.metric("modelyard_replica_ejections_total", model="chat", replica="0") >= 1:
                    break
            else:
                raise AssertionError("replica 0 was never ejected")
            knew: set[str] = set()  # the workers whose /health counts it ejected (the other learns through up)
            while len(knew) < 2:
                assert time.monotonic() < deadline, "a worker never learnt of the ejection"
                health = httpx.get(running.url + "/health", timeout=10)
                if health.json()["models"]["chat"].get("ejected") == 1:
                    knew.add(health.headers[WORKER_HEADER])
            before = bad.requests
            replies: list[httpx.Response] = []
            while len({r.headers[WORKER_HEADER] for r in replies}) < 2 and len(replies) < 40:  # in the 5 s
                replies.append(complete(running))  # a connection of its own: either worker, as the kernel picks
            assert [r.status_code for r in replies] == [200] * len(replies)
            assert len({r.headers[WORKER_HEADER] for r in replies}) == 2
            assert bad.requests == before  # the worker that did not eject it knew too
        finally:
            running.stop()
