"""Helpers for benchmarks/gateway_peers.sh: process CPU/RSS snapshots, and the merge of the parallel
`modelyard bench` clients' results into one JSON, a markdown table and a plot.

  snapshot PIDS_JSON            -> {name: {cpu_s, rss_mb}} summed over each process and its descendants
  rss PID INTERVAL              -> one JSON line {t_s, rss_mb} every INTERVAL seconds until killed
  merge WORK RESULTS --levels L -> RESULTS/results.json, table.md, gateway_peers.png
  pyspy RAW                     -> the top functions of a `py-spy record --format raw` profile, self and total
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

PROXIES = ("modelyard", "vllm-router", "litellm")


def tree_usage(pid: int) -> dict[str, float]:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"cpu_s": float("nan"), "rss_mb": float("nan")}
    cpu = rss = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            cpu += t.user + t.system
            rss += p.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    return {"cpu_s": cpu, "rss_mb": rss}


def snapshot(pids_file: str) -> None:
    pids = json.loads(Path(pids_file).read_text())
    json.dump({name: tree_usage(pid) for name, pid in pids.items()}, sys.stdout)


def rss(pid: int, interval: float) -> None:
    t0 = time.monotonic()
    while True:
        print(json.dumps({"t_s": round(time.monotonic() - t0, 1), **tree_usage(pid)}), flush=True)
        time.sleep(interval)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def merge_level(level_dir: Path) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Per target: the metrics over every client's requests; plus each client's own CPU record."""
    per: dict[str, dict[str, Any]] = {}
    clients = []
    for res in sorted(level_dir.glob("client*/results.json")):
        data = json.loads(res.read_text())
        run = data["runs"][0]
        clients.append(run["client"])
        for name, m in run["targets"].items():
            acc = per.setdefault(name, {"ok": 0, "failed": 0, "cancelled": 0, "rps": 0.0, "duration_s": 0.0,
                                        "ttft": [], "itl": [], "tpot": [], "tokens": 0, "errors": set(),
                                        "per_client": []})
            acc["ok"] += m["completed"]
            acc["failed"] += m["failed"]
            acc["cancelled"] += m["cancelled"]
            acc["rps"] += m["request_throughput"]
            acc["per_client"].append(m["completed"])
            acc["duration_s"] = max(acc["duration_s"], m["duration_s"])
        for r in data["requests"]:
            acc = per[r["target"]]
            acc["tokens"] += r["output_tokens"] if r["success"] else r.get("content_chunks", 0)
            if r["success"]:
                acc["ttft"].append(r["ttft_ms"])
                acc["itl"].extend(r["itl_ms"])
                if r.get("tpot_ms") is not None and r["output_tokens"] > 1:
                    acc["tpot"].append(r["tpot_ms"])
            elif r.get("error") and not r.get("cancelled"):
                acc["errors"].add(str(r["error"])[:120])
    out = {}
    for name, acc in per.items():
        out[name] = {
            "completed": acc["ok"], "failed": acc["failed"], "cancelled": acc["cancelled"],
            "request_throughput": acc["rps"], "duration_s": acc["duration_s"], "relayed_tokens": acc["tokens"],
            "ttft_p50_ms": pct(acc["ttft"], 50), "ttft_p99_ms": pct(acc["ttft"], 99),
            "itl_p50_ms": pct(acc["itl"], 50), "itl_p99_ms": pct(acc["itl"], 99),
            "tpot_p50_ms": pct(acc["tpot"], 50), "tpot_p99_ms": pct(acc["tpot"], 99),
            "errors": sorted(acc["errors"])[:5],
            "completed_per_load_generator": acc["per_client"],  # uneven = some connections served late
        }
    return out, clients


def cpu_per_1k(work: Path, label: str, targets: dict[str, dict[str, Any]]) -> None:
    before = work / f"{label}.before.json"
    after = work / f"{label}.after.json"
    if not (before.exists() and after.exists()):
        return
    b, a = json.loads(before.read_text()), json.loads(after.read_text())
    for name in PROXIES:
        if name in targets and name in a:
            cpu = a[name]["cpu_s"] - b[name]["cpu_s"]
            tok = targets[name]["relayed_tokens"]
            targets[name]["cpu_s"] = cpu
            targets[name]["cpu_s_per_1k_tokens"] = 1000 * cpu / tok if tok else None
            targets[name]["rss_mb"] = a[name]["rss_mb"]
    if "upstream" in a and "direct" in targets:
        targets["direct"]["upstream_cpu_s"] = a["upstream"]["cpu_s"] - b["upstream"]["cpu_s"]


def fmt(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def table(levels: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = ("| streams | target | TTFT p50 / p99 (ms) | added TTFT p50 / p99 vs direct (ms) | ITL p50 / p99 (ms) | "
            "added ITL p99 (ms) | TPOT p50 / p99 (ms) | req/s | vs vllm-router | errors (cancelled) | "
            "CPU s / 1k tokens |")
    lines = [head, "|" + "---|" * 11]
    for level, targets in levels.items():
        d = targets.get("direct", {})
        vr = targets.get("vllm-router", {})
        for name, m in targets.items():
            def added(key: str, m: dict[str, Any] = m, name: str = name, d: dict[str, Any] = d) -> str:
                if name == "direct" or m.get(key) is None or d.get(key) is None:
                    return "-"
                return f"{m[key] - d[key]:+,.1f}"
            ratio = (f"{m['request_throughput'] / vr['request_throughput']:.2f}x"
                     if vr.get("request_throughput") else "-")
            lines.append(
                f"| {level} | {name} | {fmt(m['ttft_p50_ms'])} / {fmt(m['ttft_p99_ms'])} | "
                f"{added('ttft_p50_ms')} / {added('ttft_p99_ms')} | {fmt(m['itl_p50_ms'])} / {fmt(m['itl_p99_ms'])} | "
                f"{added('itl_p99_ms')} | {fmt(m['tpot_p50_ms'], 2)} / {fmt(m['tpot_p99_ms'], 2)} | "
                f"{fmt(m['request_throughput'])} | {ratio} | "
                f"{m['failed']} ({m['cancelled']}) | {fmt(m.get('cpu_s_per_1k_tokens'), 3)} |")
    return "\n".join(lines)


def plot(levels: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [int(level) for level in levels]
    names = sorted({n for t in levels.values() for n in t}, key=lambda n: ("direct", *PROXIES).index(n)
                   if n in ("direct", *PROXIES) else 9)
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    panels = [("request_throughput", "requests/s"), ("ttft_p50_ms", "TTFT p50 (ms)"),
              ("ttft_p99_ms", "TTFT p99 (ms)"), ("itl_p99_ms", "ITL p99 (ms)")]
    for ax, (key, title) in zip(axes, panels, strict=True):
        for n in names:
            ys = [levels[str(x)].get(n, {}).get(key) for x in xs]
            ax.plot(xs, [np.nan if y is None else y for y in ys], marker="o", label=n)
        ax.set_xscale("log", base=2)
        if key != "request_throughput":
            ax.set_yscale("log")
        ax.set_xlabel("concurrent streams per target")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merge(args: argparse.Namespace) -> None:
    work, results = Path(args.work), Path(args.results)
    levels: dict[str, dict[str, dict[str, Any]]] = {}
    clients: dict[str, list[dict[str, Any]]] = {}
    for level in args.levels.split(","):
        targets, cl = merge_level(work / f"c{level}")
        cpu_per_1k(work, f"c{level}", targets)
        levels[level], clients[level] = targets, cl
    out: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_count": psutil.cpu_count(),
        "cores": args.cores, "clients": args.clients, "upstream_workers": args.upstream_workers,
        "levels": levels, "load_generators": clients,
    }
    soak = work / "soak-rss.jsonl"
    if soak.exists():
        samples = [json.loads(line) for line in soak.read_text().splitlines() if line.strip()]
        s_targets, s_clients = merge_level(work / "soak")
        out["soak"] = {"rss_samples": samples, "targets": s_targets, "load_generators": s_clients}
    (results / "results.json").write_text(json.dumps(out, indent=1))
    md = [table(levels), ""]
    for level, cl in clients.items():
        cpu = ", ".join(f"{c['client_cpu_pct']:.0f}%{' SATURATED' if c['saturated'] else ''}" for c in cl)
        up = levels[level].get("direct", {})
        up_pct = ""
        if up.get("upstream_cpu_s") is not None and up.get("duration_s"):
            share = 100 * up["upstream_cpu_s"] / up["duration_s"]
            up_pct = f"; upstream ({args.upstream_workers} process(es)) {share:.0f}% of one core"

        md.append(f"- c={level}: {len(cl)} load generator(s), CPU {cpu}; "
                  f"machine {max((c['system_cpu_pct'] for c in cl), default=0):.0f}% busy{up_pct}")
    if "soak" in out and out["soak"]["rss_samples"]:
        rs = out["soak"]["rss_samples"]
        sm = out["soak"]["targets"].get("modelyard", {})
        md.append(f"- soak: {rs[-1]['t_s']:.0f} s at 64 streams through modelyard: RSS {rs[0]['rss_mb']:.1f} MB at "
                  f"start, {rs[-1]['rss_mb']:.1f} MB at end (max {max(r['rss_mb'] for r in rs):.1f}); "
                  f"{sm.get('completed', 0)} requests, {sm.get('failed', 0)} failed")
    (results / "table.md").write_text("\n".join(md) + "\n")
    plot(levels, results / "gateway_peers.png")
    print("\n".join(md))


def pyspy(raw: str, top: int = 25) -> None:
    """Samples per process (the gateway worker, the `modelyard up` supervisor), then each busy one's top functions."""
    per: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
    counts: dict[str, int] = {}
    samples = 0
    for line in Path(raw).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        parts = stack.split(";")
        cut = max(i for i, f in enumerate(parts) if f.startswith("process ") or i == 0)
        proc = parts[cut].split(":", 1)[-1].strip('"')[:70]
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].split("/")[-1] + ")"
                  for f in parts[cut + 1:]]
        counts[proc] = counts.get(proc, 0) + n
        self_n, total_n = per.setdefault(proc, ({}, {}))
        if frames:
            self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            total_n[f] = total_n.get(f, 0) + n
    print(f"{samples} samples (py-spy --nonblocking, idle not excluded reliably: select/epoll frames are idle time)")
    for proc, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"{100 * n / max(samples, 1):5.1f}%  {proc}")
    for proc, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        if n < 0.1 * samples:
            continue
        self_n, total_n = per[proc]
        for title, table_, k in (("self", self_n, top), ("total", total_n, 15)):
            print(f"\n-- {proc}: top {k} by {title}, % of this process's samples --")
            for name, c in sorted(table_.items(), key=lambda kv: -kv[1])[:k]:
                print(f"{100 * c / n:5.1f}%  {name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("pids")
    r = sub.add_parser("rss")
    r.add_argument("pid", type=int)
    r.add_argument("interval", type=float)
    m = sub.add_parser("merge")
    m.add_argument("work")
    m.add_argument("results")
    m.add_argument("--levels", required=True)
    m.add_argument("--cores", default="")
    m.add_argument("--clients", type=int, default=1)
    m.add_argument("--upstream-workers", type=int, default=1)
    y = sub.add_parser("pyspy")
    y.add_argument("raw")
    a = p.parse_args()
    if a.cmd == "snapshot":
        snapshot(a.pids)
    elif a.cmd == "rss":
        rss(a.pid, a.interval)
    elif a.cmd == "pyspy":
        pyspy(a.raw)
    else:
        merge(a)


if __name__ == "__main__":
    main()
