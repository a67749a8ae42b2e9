"""The cost of the request schema at the door (gateway/validate.py) per request, against `orjson.loads` of the same
body in the same run (the parse the gateway does anyway): chat requests of several sizes, a completion, a batch of
embeddings, a rerank, each as the OpenAI SDK writes it (compact: the duplicate-key check's fast path), and chat bodies
as Python's `json.dumps` writes them (spaces: the regex path), with `\\u` escapes (the standard library's parser).
Each number is the best of `--repeats` runs of `--loops` calls.
Writes benchmarks/results/validate_cost/<host>-<time>.json.

    .venv/bin/python benchmarks/validate_cost.py
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import timeit
from pathlib import Path
from typing import Any

import orjson

from modelyard.gateway.validate import problem

RESULTS = Path(__file__).parent / "results" / "validate_cost"


def chat(turns: int, words: int, **extra: Any) -> dict[str, Any]:
    text = " ".join(["shipping"] * words)
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for i in range(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return {"model": "llama", "messages": messages, "max_tokens": 256, "temperature": 0.7, "stream": True,
            "stream_options": {"include_usage": True}, **extra}


def bodies() -> list[tuple[str, str, bytes]]:
    cases: list[tuple[str, str, Any]] = [
        ("chat, 1 short message", "/v1/chat/completions", chat(1, 8)),
        ("chat, 10 turns, ~2 KB", "/v1/chat/completions", chat(10, 25)),
        ("chat, 40 turns, ~100 KB", "/v1/chat/completions", chat(40, 280)),
        ("chat, 1 message, 1 MB", "/v1/chat/completions", chat(1, 110_000)),
        ("chat with user:", "/v1/chat/completions", chat(10, 25, user="team-a")),
        ("completion, ~1 KB prompt", "/v1/completions", {"model": "llama", "prompt": "word " * 200,
                                                          "max_tokens": 64, "stop": ["\n"]}),
        ("embeddings, 256 inputs", "/v1/embeddings", {"model": "minilm", "input": ["a short sentence"] * 256}),
        ("rerank, 64 documents", "/v1/rerank", {"model": "rr", "query": "q", "documents": ["a document"] * 64}),
    ]
    out = [(name, path, orjson.dumps(payload)) for name, path, payload in cases]
    spaced = [(name + ", json.dumps spacing", path, json.dumps(payload).encode())
              for name, path, payload in cases if name.startswith(("chat, 10", "chat, 40", "chat, 1 message"))]
    escaped = json.dumps(chat(10, 25) | {"messages": [{"role": "user", "content": "café " * 100}]}).encode()
    return [*out, *spaced, ("chat, spacing and \\u escapes (slowest path)", "/v1/chat/completions", escaped)]


def best(fn: Any, loops: int, repeats: int) -> float:
    return min(timeit.repeat(fn, number=loops, repeat=repeats)) / loops * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loops", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = []
    for name, path, body in bodies():
        payload = orjson.loads(body)
        assert problem(path, payload, body) is None, name
        loops = max(10, args.loops * 1000 // max(1000, len(body) // 10))  # fewer loops for large bodies
        parse_us = best(lambda body=body: orjson.loads(body), loops, args.repeats)
        check_us = best(lambda path=path, payload=payload, body=body: problem(path, payload, body), loops,
                        args.repeats)
        rows.append({"body": name, "bytes": len(body), "orjson_loads_us": round(parse_us, 2),
                     "validate_us": round(check_us, 2), "ratio": round(check_us / parse_us, 2)})
        print(f"{name:40s} {len(body):>9,d} B  orjson.loads {parse_us:9.2f} us  validate {check_us:9.2f} us  "
              f"x{check_us / parse_us:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{platform.node()}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                                          f"{platform.python_version()}", "rows": rows}, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
