"""docs/reliability.md's campaign table from the figures that benchmarks/chaos.sh's tests wrote (one JSON each).

usage: python benchmarks/chaos_report.py RESULTS_DIR --command "benchmarks/chaos.sh --scale 5"
                                          [--docs docs/reliability.md]
Writes RESULTS_DIR/table.md and, with --docs, replaces what is between the file's campaign markers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- campaign table: benchmarks/chaos_report.py -->", "<!-- end of campaign table -->"
FAULTS = {  # figures file -> what the fault was
    "chaos_kill9": "a replica killed -9 under streams",
    "chaos_sigstop": "a replica frozen (SIGSTOP) for 8 s under streams",
    "chaos_slow": "a slow replica (stopped and continued every 150 ms)",
    "chaos_failures_20pct": "20% injected faults (503, dropped connections) on every replica",
    "chaos_redis_killed": "the private redis-server killed -9 (2 workers, a key with limits)",
    "chaos_limits": "a key's rpm across 2 workers, after the redis restart",
    "chaos_sigterm": "`modelyard up` sent SIGTERM under long streams",
}


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(folder: Path) -> str:
    figures = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    lines = [_row(["what was tried", "inputs tried", "5xx (or no answer) before the first byte", "hangs",
                   "cut streams (of which silent)", "usage rows lost / zeroed", "limits exact", "faults survived"]),
             _row(["---"] * 8)]
    fuzz = figures.get("api_fuzz")
    if fuzz:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(fuzz["by_status"].items()))
        lines.append(_row([f"schemathesis on /openapi.json, every route, valid and invalid ({statuses}); "
                           f"tracebacks: {fuzz['tracebacks']}; accepted though invalid: "
                           f"{sum(fuzz['accepted_invalid'].values())}", fuzz["cases"], fuzz["server_errors"],
                           fuzz["hangs"], "-", "-", "-", "-"]))
    loader = figures.get("loader_fuzz")
    if loader:
        lines.append(_row(["hypothesis on the yard.yaml loader (any text, any YAML tree, a valid spec with a part "
                           "replaced): a spec or a SpecError naming a path", loader["cases"], "-", "-", "-", "-", "-",
                           "-"]))
    for name, what in FAULTS.items():
        f = figures.get(name)
        if not f:
            continue
        before = f["failed_before_first_byte"]
        limits = "-"
        if name == "chaos_limits":
            limits = f"{f['admitted']} of rpm {f['rpm']} admitted, {f['limited']} got 429"
            before = f"{before - f['limited']} (besides the 429s)"
        if name == "chaos_redis_killed":
            what += f"; during the outage: {', '.join(f['outage_answers'])}; restarted: {f['restarted']}"
        failed = [what for what, bad in (("failures before the first byte", f["failed_before_first_byte"]
                                          and name != "chaos_limits"), ("hangs", f["hangs"]),
                                         ("silent cuts", f["silent_cuts"]), ("rows lost", f["usage_rows_lost"]),
                                         ("rows zeroed", f["usage_rows_zeroed"])) if bad]
        survived = "yes" if not failed else "no: " + ", ".join(failed)
        lines.append(_row([what, f["requests"], before, f["hangs"], f"{f['cut']} ({f['silent_cuts']})",
                           f"{f['usage_rows_lost']} / {f['usage_rows_zeroed']}", limits, survived]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--command", required=True)
    parser.add_argument("--docs", type=Path)
    args = parser.parse_args()
    summary = ""
    pytest_out = args.results / "pytest.txt"
    if pytest_out.exists():
        lines = [line for line in pytest_out.read_text().splitlines() if line.strip()]
        summary = lines[-1].strip("= ") if lines else ""
    body = (f"`{args.command}` (results: `{args.results}`; pytest: {summary}):\n\n" + table(args.results))
    (args.results / "table.md").write_text(body)
    print(body)
    if args.docs is not None:
        text = args.docs.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        args.docs.write_text(text[:start] + "\n" + body + text[end:])


if __name__ == "__main__":
    main()
