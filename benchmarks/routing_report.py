"""Helpers of benchmarks/routing_compare.sh: snapshot counters from /metrics, and turn a run folder into a JSON, a
markdown table and a PNG plot.

    python benchmarks/routing_report.py scrape OUT.json URL...   # the counters this report needs, per URL
    python benchmarks/routing_report.py report RUN_DIR            # RUN_DIR/levels/<policy>/rate-<R>/ -> RUN_DIR/*
    python benchmarks/routing_report.py merge OUT RATE BENCH_DIR...  # tenants' benches -> one summary.csv, requests.csv

A level folder holds `summary.csv` (from `modelyard bench`), `before.json` and `after.json` (scrapes of every
simulator, then the router's own metrics when it has any). The prefix-cache hit rate of a level is the delta of
vLLM's `prefix_cache_hits` over the delta of `prefix_cache_queries`, summed over the replicas.
"""
from __future__ import annotations

import csv
import json
import re
import sys
import urllib.request
from pathlib import Path
from typing import Any

# samples kept from /metrics: the simulators' (vLLM names) and the routers' decision counters
KEEP = re.compile(r"^(vllm:prefix_cache_(hits|queries)_total|vllm:request_success_total|vllm:prompt_tokens_total"
                  r"|vllm_router_(kv_routing_inputs|prefix_routing_decisions|processed_requests|"
                  r"load_balancing_events)_total|modelyard_rout\w*)")
PERCENTILES = ("p50", "p90", "p99")


def scrape(out: Path, urls: list[str]) -> None:
    snapshot: dict[str, dict[str, float]] = {}
    for url in urls:
        samples: dict[str, float] = {}
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as resp:
                text = resp.read().decode()
        except OSError as exc:
            print(f"scrape {url}: {exc}", file=sys.stderr)
            text = ""
        for line in text.splitlines():
            if line and not line.startswith("#") and KEEP.match(line):
                name, _, value = line.rpartition(" ")
                try:
                    samples[name] = samples.get(name, 0.0) + float(value)
                except ValueError:
                    continue
        snapshot[url] = samples
    out.write_text(json.dumps(snapshot, indent=1, sort_keys=True))


def _sum(snapshot: dict[str, dict[str, float]], url: str, prefix: str) -> float:
    return sum(v for k, v in snapshot.get(url, {}).items() if k.startswith(prefix))


def _deltas(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
            url: str) -> dict[str, float]:
    keys = set(after.get(url, {})) | set(before.get(url, {}))
    return {k: after.get(url, {}).get(k, 0.0) - before.get(url, {}).get(k, 0.0) for k in sorted(keys)}


def level_row(folder: Path, sims: list[str]) -> dict[str, Any]:
    with (folder / "summary.csv").open() as f:
        summary = next(csv.DictReader(f))
    before = json.loads((folder / "before.json").read_text())
    after = json.loads((folder / "after.json").read_text())
    hits = sum(_sum(after, u, "vllm:prefix_cache_hits") - _sum(before, u, "vllm:prefix_cache_hits") for u in sims)
    queries = sum(_sum(after, u, "vllm:prefix_cache_queries") - _sum(before, u, "vllm:prefix_cache_queries")
                  for u in sims)
    per_replica = [round(_sum(after, u, "vllm:request_success") - _sum(before, u, "vllm:request_success"))
                   for u in sims]
    router = {u: {k: v for k, v in _deltas(before, after, u).items() if v} for u in after if u not in sims}
    row: dict[str, Any] = {
        "rate": float(summary["rate"]), "completed": int(summary["completed"]), "failed": int(summary["failed"]),
        "cancelled": int(summary["cancelled"]), "duration_s": float(summary["duration_s"]),
        "request_throughput": float(summary["request_throughput"]),
        "output_throughput": float(summary["output_throughput"]),
        "prefix_cache_hit_rate": hits / queries if queries else None,
        "requests_per_replica": per_replica, "router_counters": router,
        "system_cpu_pct": float(summary["system_cpu_pct"] or "nan"),
    }
    for p in PERCENTILES:
        row[f"ttft_{p}_ms"] = float(summary[f"ttft_{p}_ms"] or "nan")
    return row


def collect(run: Path) -> dict[str, Any]:
    setup = json.loads((run / "setup.json").read_text())
    policies: dict[str, list[dict[str, Any]]] = {}
    for name in setup["policies"]:
        rows = []
        for folder in sorted((run / "levels" / name).glob("rate-*"), key=lambda p: float(p.name[5:])):
            if (folder / "summary.csv").exists() and (folder / "after.json").exists():
                rows.append(level_row(folder, setup["simulators"]))
        policies[name] = rows
    return {"setup": setup, "policies": policies}


def markdown(data: dict[str, Any]) -> str:
    names = list(data["policies"])
    base = names[0]
    lines = [f"| policy | rate (req/s) | TTFT p50 / p90 / p99 (ms) | p90 vs {base} | req/s | output tok/s "
             "| prefix-cache hit rate | requests per replica |",
             "|---|---|---|---|---|---|---|---|"]
    baseline = {r["rate"]: r for r in data["policies"][base]}
    for name in names:
        for r in data["policies"][name]:
            ref = baseline.get(r["rate"])
            ratio = f"{r['ttft_p90_ms'] / ref['ttft_p90_ms']:.2f}x" if ref and ref["ttft_p90_ms"] else "-"
            hit = "-" if r["prefix_cache_hit_rate"] is None else f"{r['prefix_cache_hit_rate']:.2f}"
            fails = f" ({r['failed']} failed)" if r["failed"] else ""
            lines.append(f"| {name} | {r['rate']:g} | {r['ttft_p50_ms']:.0f} / {r['ttft_p90_ms']:.0f} / "
                         f"{r['ttft_p99_ms']:.0f} | {ratio} | {r['request_throughput']:.2f}{fails} | "
                         f"{r['output_throughput']:.0f} | {hit} | {' '.join(map(str, r['requests_per_replica']))} |")
    return "\n".join(lines) + "\n" + ratios(data)


def ratios(data: dict[str, Any], ours: str = "modelyard-default") -> str:
    """Each other policy's TTFT p90 over ours, at each rate (above 1: ours is faster), with both throughputs."""
    if not data["policies"].get(ours):
        return ""
    others = [n for n in data["policies"] if n != ours and data["policies"][n]]
    lines = ["", f"TTFT p90 of each policy / TTFT p90 of {ours} (above 1: {ours} is faster); "
             "req/s of each in brackets", "",
             "| rate | " + " | ".join(others) + " |", "|---" * (len(others) + 1) + "|"]
    by_rate = {n: {r["rate"]: r for r in data["policies"][n]} for n in data["policies"]}
    for mine in data["policies"][ours]:
        cells = []
        for name in others:
            r = by_rate[name].get(mine["rate"])
            cells.append("-" if r is None else f"{r['ttft_p90_ms'] / mine['ttft_p90_ms']:.2f}x "
                         f"({r['request_throughput']:.1f} vs {mine['request_throughput']:.1f})")
        lines.append(f"| {mine['rate']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ttft, ax_hit) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, rows in data["policies"].items():
        if not rows:
            continue
        style = "-" if name.startswith("modelyard") else "--"
        rates = [r["rate"] for r in rows]
        ax_ttft.plot(rates, [r["ttft_p90_ms"] for r in rows], style, marker="o", label=name)
        ax_hit.plot(rates, [r["prefix_cache_hit_rate"] or 0.0 for r in rows], style, marker="o", label=name)
    ax_ttft.set(xlabel="offered rate (req/s)", ylabel="TTFT p90 (ms, log)", yscale="log",
                title="TTFT p90 vs request rate")
    ax_hit.set(xlabel="offered rate (req/s)", ylabel="prefix-cache hit rate (tokens)", ylim=(0, 1),
               title="prefix-cache hit rate (sum over replicas)")
    for ax in (ax_ttft, ax_hit):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    setup = data["setup"]
    fig.suptitle(f"shared-prefix workload, {len(setup['simulators'])} simulator replicas ({setup['started']})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def merge(out: Path, rate: float, benches: list[Path]) -> None:
    """The tenants' benches of one level as one: their requests together, the summary's fields that this report
    reads recomputed from them (percentiles as `modelyard bench` computes them: numpy's, linear)."""
    import numpy as np

    rows: list[dict[str, str]] = []
    durations, cpu = [], []
    for bench in benches:
        with (bench / "requests.csv").open() as f:
            rows += [{**r, "group": f"{bench.name}-{r['group']}"} for r in csv.DictReader(f)]
        with (bench / "summary.csv").open() as f:
            summary = next(csv.DictReader(f))
        durations.append(float(summary["duration_s"]))
        cpu.append(float(summary["system_cpu_pct"] or "nan"))
    out.mkdir(parents=True, exist_ok=True)
    with (out / "requests.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ok = [r for r in rows if r["success"] == "True"]
    duration = max(durations)
    ttft = np.array([float(r["ttft_ms"]) for r in ok]) if ok else np.zeros(1)
    merged = {"rate": rate, "completed": len(ok), "cancelled": sum(r["cancelled"] == "True" for r in rows),
              "duration_s": duration, "request_throughput": len(ok) / duration,
              "output_throughput": sum(int(r["output_tokens"] or 0) for r in ok) / duration,
              "system_cpu_pct": max(cpu)}
    merged["failed"] = len(rows) - len(ok) - merged["cancelled"]
    for p in PERCENTILES:
        merged[f"ttft_{p}_ms"] = float(np.percentile(ttft, float(p[1:])))
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(merged))
        writer.writeheader()
        writer.writerow(merged)
    print(f"tenants {len(benches)}: TTFT p90 {merged['ttft_p90_ms']:.1f} ms; Request throughput "
          f"{merged['request_throughput']:.2f} req/s; {merged['failed']} failed")


def saturation(rows: list[dict[str, Any]], keep: float = 0.85) -> float | None:
    """The highest offered rate whose level kept up (request throughput >= `keep` x offered, nothing failed);
    None when none did."""
    kept = [r["rate"] for r in rows if not r["failed"] and r["request_throughput"] >= keep * r["rate"]]
    return max(kept) if kept else None


def versus(data: dict[str, Any], subject: str = "modelyard-precise",
           bases: tuple[str, ...] = ("vllm-router-cache_aware", "modelyard-default")) -> str:
    """The subject's TTFT p90 and hit rate at each rate, over each base's of the same run; then each policy's
    saturation (the highest rate it kept up with) and the issue's targets at the subject's levels up to 90 % of
    it."""
    policies = data["policies"]
    if not policies.get(subject):
        return ""
    present = [b for b in bases if policies.get(b)]
    by_rate = {n: {r["rate"]: r for r in rows} for n, rows in policies.items()}
    head = "| rate | " + subject + " p50 / p90 / p99 (ms), hit, req/s | " + " | ".join(
        f"{b} p90, hit, req/s | p90 {subject} / {b}" for b in present) + " |"
    lines = ["", head, "|---" * (2 + 2 * len(present)) + "|"]
    for mine in policies[subject]:
        cells = [f"{mine['ttft_p50_ms']:.0f} / {mine['ttft_p90_ms']:.0f} / {mine['ttft_p99_ms']:.0f}, "
                 f"{_hit(mine)}, {mine['request_throughput']:.1f}"]
        for base in present:
            ref = by_rate[base].get(mine["rate"])
            if ref is None:
                cells += ["-", "-"]
                continue
            cells += [f"{ref['ttft_p90_ms']:.0f}, {_hit(ref)}, {ref['request_throughput']:.1f}",
                      f"{mine['ttft_p90_ms'] / ref['ttft_p90_ms']:.2f}x" if ref["ttft_p90_ms"] else "-"]
        lines.append(f"| {mine['rate']:g} | " + " | ".join(cells) + " |")
    sat = {n: saturation(rows) for n, rows in policies.items() if rows}
    lines += ["", "Saturation (highest offered rate kept up with, >= 0.85 of it served in the level, none failed; "
              "the top rate measured marked +): " + ", ".join(
                  f"{n} {'-' if v is None else format(v, 'g')}"
                  f"{'+' if v is not None and v == max(r['rate'] for r in policies[n]) else ''}"
                  for n, v in sat.items())]
    top = sat.get(subject)
    if top:
        upto = [r for r in policies[subject] if r["rate"] <= 0.9 * top + 1e-9]
        hits = [r["prefix_cache_hit_rate"] for r in upto if r["prefix_cache_hit_rate"] is not None]
        p90 = [r["ttft_p90_ms"] for r in upto]
        if upto:
            rates = ", ".join(format(r["rate"], "g") for r in upto)
            lines.append(f"{subject} at rates up to 90 % of its saturation ({rates}):"
                         f" hit rate min {min(hits) if hits else float('nan'):.3f} (target >= 0.93), TTFT p90 max "
                         f"{max(p90):.0f} ms (target <= 50)")
    return "\n".join(lines) + "\n"


def _hit(row: dict[str, Any]) -> str:
    return "-" if row["prefix_cache_hit_rate"] is None else f"{row['prefix_cache_hit_rate']:.3f}"


def report(run: Path) -> None:
    data = collect(run)
    (run / "routing_compare.json").write_text(json.dumps(data, indent=1))
    table = markdown(data) + versus(data)
    (run / "routing_compare.md").write_text(table)
    plot(data, run / "routing_compare.png")
    print(table)


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "scrape":
        scrape(Path(argv[1]), argv[2:])
        return 0
    if len(argv) >= 4 and argv[0] == "merge":
        merge(Path(argv[1]), float(argv[2]), [Path(a) for a in argv[3:]])
        return 0
    if len(argv) == 2 and argv[0] == "report":
        report(Path(argv[1]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
