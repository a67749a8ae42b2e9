"""benchmarks/disaggregation.sh's table: per rate, TTFT and TPOT p90 (and ITL p99) of the 4 mixed replicas and of
2 prefill + 2 decode, with the ratio split / mixed, from each level's summary.csv.

usage: python benchmarks/disaggregation_report.py RESULTS_DIR [--command "benchmarks/disaggregation.sh 2,4,6"]
Writes RESULTS_DIR/table.md and RESULTS_DIR/table.json, and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

METRICS = (("ttft_p90_ms", "TTFT p90"), ("tpot_p90_ms", "TPOT p90"), ("itl_p99_ms", "ITL p99"),
           ("e2el_p90_ms", "E2EL p90"))


def rows(results: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    levels = sorted(results.glob("rate-*/summary.csv"), key=lambda p: float(p.parent.name.removeprefix("rate-")))
    for summary in levels:
        by_target = {row["target"]: row for row in csv.DictReader(summary.open())}
        mixed, split = by_target["mixed"], by_target["split"]
        row: dict[str, object] = {"rate": float(summary.parent.name.removeprefix("rate-")),
                                  "completed": f"{mixed['completed']}/{split['completed']}",
                                  "failed": f"{mixed['failed']}/{split['failed']}"}
        for key, _ in METRICS:
            row[key] = (float(mixed[key]), float(split[key]), float(split[key]) / float(mixed[key]))
        out.append(row)
    return out


def table(data: list[dict[str, object]], command: str) -> str:
    head = "| req/s per target | completed (mixed/split) | " + " | ".join(
        f"{name} mixed | {name} split | split/mixed" for _, name in METRICS) + " |"
    lines = [f"Command: `{command}`", "", head, "|" + "---|" * (2 + 3 * len(METRICS))]
    for row in data:
        cells = [f"{row['rate']:g}", str(row["completed"])]
        for key, _ in METRICS:
            mixed, split, ratio = row[key]  # type: ignore[misc]
            cells += [f"{mixed:,.1f} ms", f"{split:,.1f} ms", f"{ratio:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--command", default="benchmarks/disaggregation.sh")
    args = parser.parse_args()
    data = rows(args.results)
    text = table(data, args.command)
    (args.results / "table.md").write_text(text)
    (args.results / "table.json").write_text(json.dumps(data, indent=1))
    print(text)


if __name__ == "__main__":
    main()
