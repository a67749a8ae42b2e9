"""`modelyard up` with the gateway's secrets in its environment: no replica and no redis-server has any of them
(read from /proc/<pid>/environ of the real processes); the workers hold none either, they get hashes. Each gets a
named environment, not ours whole."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil

from tests.cluster import API_KEY, METRICS_KEY, Cluster

ADMIN = "admin-key-" + "a" * 24
TEAM = "team-key-" + "t" * 24


def environ(process: psutil.Process) -> bytes:
    return Path(f"/proc/{process.pid}/environ").read_bytes()


def test_no_child_process_of_up_has_a_gateway_secret_in_its_environment(tmp_path: Path) -> None:
    model = {"name": "chat", "engine": "simulator", "profile": "tiny-cpu", "replicas": 2}
    cluster = Cluster(tmp_path, [model], gateway={"workers": 2, "keys": [{"name": "team", "key_env": "TEAM_KEY"}]},
                      env={"MODELYARD_ADMIN_KEY": ADMIN, "TEAM_KEY": TEAM, "UNRELATED_TOKEN": "u" * 16}).start()
    try:
        reply = httpx.post(cluster.url + "/v1/completions", headers={"Authorization": f"Bearer {TEAM}"},
                           json={"model": "chat", "prompt": "hi", "max_tokens": 2}, timeout=30)
        assert reply.status_code == 200, reply.text
        children = {p.pid: " ".join(p.cmdline()) for p in cluster.engine_processes()}
        replicas = [pid for pid, cmd in children.items() if "modelyard.simulator" in cmd]
        redis = [pid for pid, cmd in children.items() if "redis-server" in cmd]
        assert len(replicas) == 2 and len(redis) == 1, children
        for pid in (*replicas, *redis, *[p for p, cmd in children.items() if "gateway.workers" in cmd]):
            env = environ(psutil.Process(pid))
            for secret in (ADMIN, TEAM, API_KEY, METRICS_KEY):
                assert secret.encode() not in env, (children[pid], secret)
        workers = [pid for pid, cmd in children.items() if "gateway.workers" in cmd]
        assert len(workers) == 2, children
        for pid in (*replicas, *redis, *workers):  # named, not inherited whole: no variable of ours they do not need
            assert b"UNRELATED_TOKEN=" not in environ(psutil.Process(pid)), children[pid]
        assert b"PATH=" in environ(psutil.Process(replicas[0])) and b"PATH=" in environ(psutil.Process(workers[0]))
    finally:
        cluster.stop()
