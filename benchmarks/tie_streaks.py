"""How evenly the default routing spreads requests over idle replicas that tie: sequential embeddings requests to a
model with two simulator replicas (one gateway worker, `modelyard up`), and the longest streak of requests that
went to one replica. A fair coin over N requests gives a longest streak of about log2(N).

    .venv/bin/python benchmarks/tie_streaks.py [--requests 4000] [--connection-per-request] [REF ...]

Each REF (a commit; `.`, the default: this checkout) gets its own cluster, one after the other, its gateway run
from a git worktree of that commit (PYTHONPATH). Writes benchmarks/results/tie_streaks-<time>/results.json."""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import API_KEY, Cluster  # noqa: E402


def streaks(src: Path | None, tmp: Path, requests: int, fresh: bool) -> dict[str, Any]:
    params = {"itl_base_s": 0.001, "prefill_s_per_token": 0.00001}
    models = [{"name": "sim-embed", "engine": "simulator", "task": "embedding", "params": params, "replicas": 2}]
    tmp.mkdir(parents=True)
    env = {"PYTHONPATH": str(src)} if src else {}
    cluster = Cluster(tmp, models, gateway={"workers": 1}, env=env).start(timeout_s=60)
    picks = []
    try:
        started = time.monotonic()
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(headers=headers, timeout=30) as client:
            for _ in range(requests):
                body = {"model": "sim-embed", "input": "same"}
                reply = (httpx.post(cluster.url + "/v1/embeddings", json=body, headers=headers, timeout=30) if fresh
                         else client.post(cluster.url + "/v1/embeddings", json=body))
                picks.append(reply.headers["x-modelyard-replica"][-1])
        seconds = time.monotonic() - started
    finally:
        cluster.stop()
    runs = [len(run) for run in re.findall(r"0+|1+", "".join(picks))]
    return {"requests": requests, "seconds": round(seconds, 1), "longest_streak": max(runs),
            "streaks_of_17_or_more": sum(1 for r in runs if r >= 17),
            "share_of_replica_0": round(picks.count("0") / requests, 3),
            "streak_lengths": dict(sorted(collections.Counter(runs).items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--connection-per-request", action="store_true",
                        help="a new connection for each request (slower: a few times longer between requests)")
    parser.add_argument("refs", nargs="*", default=["."])
    args = parser.parse_args()
    results = ROOT / "benchmarks" / "results" / f"tie_streaks-{time.strftime('%Y%m%d-%H%M%S')}"
    results.mkdir(parents=True)
    out: dict[str, Any] = {"command": " ".join(sys.argv), "machine": f"{os.cpu_count()} cores"}
    with tempfile.TemporaryDirectory() as work:
        for ref in args.refs:
            src = None
            if ref != ".":
                src = Path(work) / f"src-{ref}"
                subprocess.run(["git", "worktree", "add", "-f", "--detach", str(src), ref], cwd=ROOT, check=True,
                               capture_output=True)
            try:
                out[ref] = streaks(src, Path(work) / f"cluster-{ref}", args.requests,
                                   args.connection_per_request)
            finally:
                if src:
                    subprocess.run(["git", "worktree", "remove", "--force", str(src)], cwd=ROOT, check=False)
            print(ref, {k: v for k, v in out[ref].items() if k != "streak_lengths"}, flush=True)
    (results / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"results: {results}")


if __name__ == "__main__":
    main()
