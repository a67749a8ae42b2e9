"""The reliability campaign's shared parts (issue 15, item 9): its scale and its figures.

The tests run it small (CI); `benchmarks/chaos.sh` runs the same tests with MODELYARD_CAMPAIGN_SCALE (more cases,
longer load) and MODELYARD_CAMPAIGN_OUT (a folder: each test writes its figures there as one JSON file), from
which `benchmarks/chaos_report.py` writes docs/reliability.md's table.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

TRACEBACK = re.compile(r"^Traceback \(most recent call last\)", re.MULTILINE)


def scale() -> int:
    return max(1, int(os.environ.get("MODELYARD_CAMPAIGN_SCALE", "1")))


def record(name: str, figures: dict[str, Any]) -> None:
    """A test's figures for the campaign's report, when the campaign asks for them."""
    folder = os.environ.get("MODELYARD_CAMPAIGN_OUT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True))


def tracebacks(*roots: Path) -> list[str]:
    """Every log under `roots` that holds a Python traceback, with its first one's last lines."""
    found = []
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*.log")):
            text = path.read_text(errors="replace")
            match = TRACEBACK.search(text)
            if match:
                found.append(f"{path}: {text[match.start():match.start() + 1500]}")
    return found
