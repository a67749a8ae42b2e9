"""Routing decision time per request, for every built-in profile, at 64 replicas (issue target: under 100 us).

One gateway-side Router in this process, 64 ready replicas with engine metrics that move as requests are placed,
and shared-prefix chat requests shaped like `modelyard bench --dataset shared-prefix`'s (16 groups, each a
~1000-word system prompt, 16 conversations of 3 turns; made here with `random`, so that the script needs nothing
but the routing package). Times `Router.pick` from the RouteRequest's creation (so the prompt rendering and prefix
hashing are included) to the chosen replica. For `precise`, the replicas publish KV events and the request's
block keys are ready (what `Router.prepare` computes through the engine's /tokenize, measured apart by
benchmarks/block_keys.py; here the simulator's tokenizer and template, hashed once per prompt beforehand: the keys of
the system head, as the scorer's default `head_keys` gives them, or with --whole-keys those of the whole prompt),
and each routed request's blocks are stored in the chosen replica's share of the index, as its events would say.
Writes benchmarks/results/routing_decision/<host>-<time>.json.

    .venv/bin/python benchmarks/routing_decision.py --replicas 64 --requests 20000
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

from modelyard.kv_hash import BlockHasher
from modelyard.routing import registry
from modelyard.routing.contracts import RouteRequest
from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState
from modelyard.routing.pipeline import Router
from modelyard.routing.plugins.precise_prefix import PrecisePrefixScorer
from modelyard.simulator.tokens import render_chat, tokenize
from modelyard.spec.schema import OpenAIModel, YardSpec

RESULTS = Path(__file__).parent / "results" / "routing_decision"


WORDS = ("order", "ship", "invoice", "refund", "the", "a", "of", "to", "customer", "package", "late", "address",
         "warehouse", "please", "check", "status", "when", "will", "my", "arrive", "is", "and", "for", "account")


def shared_prefix(rng: random.Random, groups: int = 16, system_words: int = 1000, conversations: int = 16,
                  turns: int = 3) -> list[dict[str, Any]]:
    """Chat requests, turn by turn, round-robin over groups (as the bench's shared-prefix dataset orders them)."""
    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    systems = [f"You are assistant {g}. " + words(system_words) for g in range(groups)]
    histories = {(g, c): [{"role": "system", "content": systems[g]}]
                 for g in range(groups) for c in range(conversations)}
    out = []
    for _ in range(turns):
        for c in range(conversations):
            for g in range(groups):
                history = histories[(g, c)]
                history.append({"role": "user", "content": words(32)})
                out.append({"model": "m", "messages": list(history), "user": f"g{g}-c{c}"})
                history.append({"role": "assistant", "content": words(64)})
    return out


def table_of(replicas: int, rng: random.Random) -> EndpointTable:
    table = EndpointTable()
    for index in range(replicas):
        table.add(Endpoint(model="m", replica=index, url=f"http://127.0.0.{index + 1}:9000", state=ReplicaState.READY,
                           in_flight=rng.randint(0, 16), running=rng.randint(0, 32), waiting=rng.randint(0, 3),
                           kv_usage=rng.random() * 0.9, scraped_at=1.0))
    return table


def measure(profile: str, replicas: int, prompts: list[dict[str, Any]], requests: int, seed: int,
            whole_keys: bool = False) -> dict[str, Any]:
    rng = random.Random(seed)
    model = OpenAIModel(name="m", engine="openai", urls=tuple(f"http://127.0.0.{i + 1}:9000" for i in range(replicas)),
                        replicas=replicas, routing=profile)
    table = table_of(replicas, rng)
    router = Router(YardSpec(models=(model,)), table, rng=random.Random(seed))
    endpoints = table.of("m")
    precise = next((s for s, _, _ in router.pipelines["m"].scorers if isinstance(s, PrecisePrefixScorer)), None)
    keys: list[tuple[int, ...]] = []
    if precise is not None:
        for endpoint in endpoints:
            endpoint.kv_events = f"tcp://{endpoint.url[7:].rpartition(':')[0]}:5557"
        hasher = BlockHasher("0")
        if whole_keys:
            keys = [hasher.keys(tokenize(render_chat(p["messages"])), 16) for p in prompts]
        else:  # routing/head_keys.py: the leading system message without a generation prompt
            keys = [hasher.keys(tokenize(render_chat(p["messages"][:1], add_generation_prompt=False)), 16)
                    for p in prompts]
    samples: list[int] = []
    clock = time.perf_counter_ns
    for n in range(requests + 500):
        payload = prompts[n % len(prompts)]
        start = clock()
        request = RouteRequest.of("m", payload, None)
        if precise is not None:
            request.kv_keys = keys[n % len(prompts)]
        chosen = router.pick(request)
        elapsed = clock() - start
        if precise is not None and chosen is not None:
            precise.index.stored(chosen.replica, keys[n % len(prompts)])
        if n >= 500:  # warm-up excluded
            samples.append(elapsed)
        assert chosen is not None
        chosen.in_flight += 1  # the load moves: the chosen one gets busier, a random one finishes a request
        done = endpoints[rng.randrange(replicas)]
        done.in_flight = max(0, done.in_flight - 1)
        if n % 64 == 0:
            scraped = endpoints[rng.randrange(replicas)]
            scraped.running, scraped.waiting = scraped.in_flight, rng.randint(0, 3)
    samples.sort()
    us = [s / 1000 for s in samples]
    plugins = {plugin: round(h.sum / max(1, sum(h.counts)) * 1e6, 2)
               for (_, plugin), h in router.timings._plugins.items()}
    return {"profile": profile, "replicas": replicas, "requests": requests,
            "median_us": round(statistics.median(us), 2), "p90_us": round(us[int(len(us) * 0.90)], 2),
            "p99_us": round(us[int(len(us) * 0.99)], 2), "mean_us": round(statistics.fmean(us), 2),
            "plugin_mean_us": plugins}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--whole-keys", action="store_true", help="precise: the whole prompt's keys (head_keys off)")
    args = parser.parse_args()
    prompts = shared_prefix(random.Random(args.seed))
    results = [measure(p.name, args.replicas, prompts, args.requests, args.seed, args.whole_keys)
               for p in registry.BUILTIN_PROFILES]
    chars = statistics.median(len(RouteRequest("m", p).text) for p in prompts)
    whole = " --whole-keys" if args.whole_keys else ""
    report = {"command": f"benchmarks/routing_decision.py --replicas {args.replicas} --requests {args.requests}{whole}",
              "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}",
              "workload": f"shared-prefix chat requests, median {chars:.0f} characters of prompt text",
              "results": results}
    out = args.out or RESULTS / f"{platform.node()}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for row in results:
        print(f"{row['profile']:>12}: median {row['median_us']:7.1f} us, p99 {row['p99_us']:7.1f} us, "
              f"plugins (mean us) {row['plugin_mean_us']}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
