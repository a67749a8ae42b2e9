from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from modelyard.bench.metrics import LATENCY_METRICS
from modelyard.bench.runner import BenchResult, LevelResult

SUMMARY_FIELDS = ("completed", "failed", "cancelled", "duration_s", "total_input_tokens", "total_output_tokens",
                  "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
                  "max_output_tokens_per_s", "max_concurrent_requests")
LABELS = {
    "completed": "Successful requests", "failed": "Failed requests", "cancelled": "Cancelled (time bound)",
    "duration_s": "Duration (s)", "total_input_tokens": "Input tokens", "total_output_tokens": "Output tokens",
    "request_throughput": "Request throughput (req/s)", "request_goodput": "Request goodput (req/s)",
    "output_throughput": "Output token throughput (tok/s)", "total_token_throughput": "Total token throughput (tok/s)",
    "max_output_tokens_per_s": "Peak output tokens/s", "max_concurrent_requests": "Peak concurrent requests",
}


def warnings_for(result: BenchResult) -> list[str]:
    out = []
    for lv in result.levels:
        usage = lv.client.summary()
        if usage["saturated"]:
            out.append(f"{lv.level.label}: the load generator used {usage['client_cpu_pct']}% of a core (peak "
                       f"{usage['client_cpu_peak_pct']}%); latencies here may be the client's bottleneck, not the "
                       "server's. Lower the load or run the client on its own cores.")
        elif usage["system_cpu_pct"] >= 95:
            out.append(f"{lv.level.label}: this machine's CPUs were {usage['system_cpu_pct']}% busy; a server on the "
                       "same machine competes with the client and with whatever else runs here.")
        for name, m in lv.metrics.items():
            if m["failed"]:
                out.append(f"{lv.level.label} {name}: {m['failed']} request(s) failed")
            if m["cancelled"]:
                out.append(f"{lv.level.label} {name}: {m['cancelled']} request(s) cut off by --max-duration")
            if m["completed"] and m["output_tokens_from_usage"] < m["completed"]:
                out.append(f"{lv.level.label} {name}: {m['completed'] - m['output_tokens_from_usage']} response(s) "
                           "had no usage; their output tokens are counted content chunks and their input tokens "
                           "word-count estimates")
    return out


def _config_json(result: BenchResult, extra: dict[str, Any]) -> dict[str, Any]:
    c = result.config
    return {
        "targets": [{"name": t.name, "base_url": t.base_url, "model": t.model} for t in c.targets],
        "levels": [lv.label for lv in c.levels], "endpoint": c.endpoint, "requests_per_level": len(c.prompts),
        "warmup": c.warmup, "burstiness": c.burstiness, "seed": c.seed, "max_duration_s": c.max_duration,
        "percentiles": list(c.percentiles), "goodput_ms": c.goodput_ms, **extra,
    }


def _level_json(lv: LevelResult) -> dict[str, Any]:
    return {"level": lv.level.label, "concurrency": lv.level.concurrency, "rate": lv.level.rate,
            "client": lv.client.summary(), "targets": lv.metrics}


def write_outputs(result: BenchResult, out_dir: Path, extra_config: dict[str, Any]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [r for lv in result.levels for r in lv.records]
    requests = [{**r.as_row(), "itl_ms": [round(g * 1000, 3) for g in r.itl]} for r in records]
    doc = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": _config_json(result, extra_config),
        "warmup_requests": len(result.warmup_records),
        "warmup_failed": sum(1 for r in result.warmup_records if not r.success),
        "runs": [_level_json(lv) for lv in result.levels],
        "warnings": warnings_for(result),
        "requests": requests,
    }
    paths = [out_dir / "results.json", out_dir / "requests.csv", out_dir / "summary.csv"]
    paths[0].write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    _write_csv(paths[1], [r.as_row() for r in records])
    _write_csv(paths[2], summary_rows(result))
    return paths


def summary_rows(result: BenchResult) -> list[dict[str, Any]]:
    rows = []
    for lv in result.levels:
        for name, m in lv.metrics.items():
            row: dict[str, Any] = {"level": lv.level.label, "concurrency": lv.level.concurrency,
                                   "rate": lv.level.rate, "target": name}
            row.update({k: m.get(k, "") for k in SUMMARY_FIELDS})
            for metric in LATENCY_METRICS:
                row.update({f"{metric}_{k}_ms": v for k, v in m[f"{metric}_ms"].items()})
            row.update(lv.client.summary())
            rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        if not rows:
            return
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def _ratio(value: Any, base: Any) -> str:
    if not isinstance(value, int | float) or not isinstance(base, int | float) or base == 0:
        return "-"
    return f"{value / base:.2f}x"


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    rows = [(LABELS[k], metrics[k]) for k in SUMMARY_FIELDS if k in metrics]
    for metric in LATENCY_METRICS:
        for stat, value in metrics[f"{metric}_ms"].items():
            if stat not in ("std", "p50"):
                rows.append((f"{metric.upper()} {stat} (ms)", value))
    return rows


def level_table(lv: LevelResult) -> Table:
    names = list(lv.metrics)
    usage = lv.client.summary()
    table = Table(title=f"{lv.level.label}  (client CPU {usage['client_cpu_pct']}% of a core, "
                        f"loop lag p99 {usage['loop_lag_p99_ms']} ms)", title_justify="left")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    for name in names[1:]:
        table.add_column(f"{name} / {names[0]}", justify="right")
    per_target = [_metric_rows(lv.metrics[n]) for n in names]
    for i, (label, base) in enumerate(per_target[0]):
        values = [rows[i][1] for rows in per_target]
        table.add_row(label, *(_fmt(v) for v in values), *(_ratio(v, base) for v in values[1:]))
    return table


def print_summary(result: BenchResult, console: Console) -> None:
    for lv in result.levels:
        console.print(level_table(lv))
    for warning in warnings_for(result):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
