"""The prefix-cache hit rate that no router can beat on a workload: one replica with an unbounded cache serving
routing_compare.sh's requests in their order, with the simulator's tokenizer, chat template and block chain (what
the simulators count: hit tokens, in whole blocks, never the prompt's last token, over prompt tokens). What a
policy loses below it is placement and eviction; what the ceiling itself lacks is the workload's own (each system
prompt's first request, each turn's new text, the partial last block).

    .venv/bin/python benchmarks/prefix_ceiling.py --num-requests 384 [--prime 16] -- WORKLOAD ARGS
    .venv/bin/python benchmarks/prefix_ceiling.py --num-requests 384 --tenants "SHARE|PRIME|ARGS;..."

WORKLOAD ARGS as `modelyard bench` takes them (--dataset shared-prefix --prefix-groups ... or --dataset jsonl
--dataset-path FILE); with --prime N the first N requests fill the cache first and are not counted (PRIME).
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from modelyard.bench import datasets
from modelyard.bench.records import Prompt
from modelyard.kv_hash import block_keys
from modelyard.simulator.latency import max_cacheable_blocks
from modelyard.simulator.tokens import render_chat, tokenize


def workload(args: list[str], n: int) -> list[Prompt]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="shared-prefix")
    parser.add_argument("--dataset-path", type=Path)
    parser.add_argument("--prefix-groups", type=int, default=4)
    parser.add_argument("--prefix-len", type=int, default=1024)
    parser.add_argument("--prefix-conversations", type=int, default=8)
    parser.add_argument("--prefix-turns", type=int, default=3)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    kw, _ = parser.parse_known_args(args)
    if kw.dataset == "jsonl":
        prompts = datasets.jsonl(kw.dataset_path, kw.output_len)
    else:
        spec = datasets.SharedPrefixSpec(groups=kw.prefix_groups, system_tokens=kw.prefix_len,
                                         conversations_per_group=kw.prefix_conversations, turns=kw.prefix_turns,
                                         question_tokens=kw.input_len, output_len=kw.output_len,
                                         answer_tokens=kw.output_len)
        prompts = datasets.shared_prefix(spec, kw.seed)
    return datasets.cycle(prompts, n)


def ceiling(prompts: list[Prompt], prime: int, block_size: int = 16) -> tuple[int, int]:
    """(hit tokens, prompt tokens) of the requests past the first `prime`."""
    held: set[int] = set()
    hits = queries = 0
    for i, prompt in enumerate(prompts[:prime] + prompts):
        tokens = tokenize(render_chat(list(prompt.messages)))
        keys = block_keys(tokens, block_size, "0")
        found = 0
        for key in keys[:max_cacheable_blocks(len(tokens), block_size)]:
            if key not in held:
                break
            found += 1
        held.update(keys)
        if i >= prime:
            hits += found * block_size
            queries += len(tokens)
    return hits, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-requests", type=int, required=True)
    parser.add_argument("--prime", type=int, default=0)
    parser.add_argument("--tenants", default="")
    parser.add_argument("workload", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    parts: list[tuple[list[str], int, int]] = []
    if args.tenants:
        for tenant in args.tenants.split(";"):
            share, prime, rest = tenant.split("|", 2)
            parts.append((rest.split(), max(1, round(args.num_requests * float(share))), int(prime)))
    else:
        parts.append(([a for a in args.workload if a != "--"], args.num_requests, args.prime))
    hits = queries = 0
    for words, n, prime in parts:
        h, q = ceiling(workload(words, n), prime)
        hits, queries = hits + h, queries + q
    print(json.dumps({"hit_tokens": hits, "prompt_tokens": queries, "ceiling": round(hits / queries, 4)}))


if __name__ == "__main__":
    main()
