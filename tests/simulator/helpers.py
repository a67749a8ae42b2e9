from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable


def metric(base_url: str, name: str) -> float:
    """The value of a label-less-looking sample `name{...}` from /metrics (first match)."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as resp:  # no TLS setup: cheap to poll
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Polls until `check` holds: a wait for a state, not a timing assertion."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)
