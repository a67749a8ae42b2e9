"""Runs a Python script (benchmarks/hot_path_gateway.py, as benchmarks/gateway_hot_path.sh starts it with
WRAP=benchmarks/gc_pauses.py) with the cyclic garbage collector's passes timed: every 5 s, on stderr, the passes per
generation so far and the longest of each (ms), and each pass over 2 ms as it happens, with what it collected.
usage: python benchmarks/gc_pauses.py SCRIPT [ARGS ...]
"""

from __future__ import annotations

import collections
import gc
import runpy
import sys
import threading
import time
from typing import Any

started = [0.0]
passes: collections.Counter[int] = collections.Counter()
longest = [0.0, 0.0, 0.0]


def timed(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        started[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - started[0]) * 1000
    generation = info["generation"]
    passes[generation] += 1
    longest[generation] = max(longest[generation], ms)
    if ms > 2:
        print(f"gc gen{generation} {ms:.1f} ms, collected {info['collected']}", file=sys.stderr, flush=True)


def report() -> None:
    while True:
        time.sleep(5)
        print(f"gc passes {dict(passes)}, longest (ms) {[round(ms, 1) for ms in longest]}", file=sys.stderr, flush=True)


gc.callbacks.append(timed)
threading.Thread(target=report, daemon=True).start()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
