"""The relay's per-chunk usage work, CPU only: what main did before issue 15 (a byte search for `"usage":{`) against
`gateway/sse.py`'s `SseUsage.feed` (event boundaries, data events counted, the usage key checked), on the chunks
engines send: a vLLM/simulator token, OpenAI's `"usage": null` token, a usage-only event. Best of 5 runs of
1,000,000 calls each, in one process (same run, same machine).

    PYTHONPATH=. .venv/bin/python benchmarks/sse_feed.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import timeit
from pathlib import Path

from modelyard.gateway.sse import SseUsage

USAGE_MARK = b'"usage":{'  # main at cf93dcc: relay.USAGE_MARK
TOKEN = (b'data: {"id":"cmpl-8c1f4e","object":"text_completion","created":1733000000,"model":"sim",'
         b'"choices":[{"index":0,"text":" token","logprobs":null,"finish_reason":null}]}\n\n')
OPENAI_TOKEN = TOKEN[:-3] + b',"usage":null}\n\n'
USAGE_EVENT = (b'data: {"id":"cmpl-8c1f4e","object":"text_completion","created":1733000000,"model":"sim",'
               b'"choices":[],"usage":{"prompt_tokens":12,"total_tokens":76,"completion_tokens":64}}\n\n')


def before(chunk: bytes) -> bytes:
    """main's `_Pipe.feed` up to the queueing: the search, and the split when it hits (split_usage_event)."""
    if USAGE_MARK in chunk:
        index = chunk.find(USAGE_MARK)
        start = max(chunk.rfind(b"data:", 0, index), 0)
        end = chunk.find(b"\n\n", index)
        end = len(chunk) if end < 0 else end + 2
        event = chunk[start:end]
        if b'"choices":[]' in event.replace(b" ", b""):
            return chunk[:start] + chunk[end:]
    return chunk


def ns_per_call(call: object, number: int = 1_000_000) -> float:
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e9  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {}
    for name, chunk in (("token", TOKEN), ("openai_token_usage_null", OPENAI_TOKEN), ("usage_event", USAGE_EVENT)):
        scanner = SseUsage(keep=False)
        results[name] = {"bytes": len(chunk), "before_ns": round(ns_per_call(lambda c=chunk: before(c))),
                         "sse_feed_ns": round(ns_per_call(lambda c=chunk, s=scanner: s.feed(c)))}
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
