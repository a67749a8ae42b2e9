from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from modelyard.bench.metrics import latency_metrics
from modelyard.bench.records import Batch, is_streamed
from modelyard.bench.runner import BenchConfig, BenchResult, LevelResult

SUMMARY_FIELDS = ("completed", "failed", "cancelled", "duration_s", "total_input_tokens", "total_output_tokens",
                  "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
                  "max_output_tokens_per_s", "max_concurrent_requests")
POOLING_SUMMARY_FIELDS = ("completed", "failed", "cancelled", "duration_s", "total_inputs", "total_input_tokens",
                          "request_throughput", "request_goodput", "input_throughput", "input_token_throughput",
                          "max_concurrent_requests")
LABELS = {
    "completed": "Successful requests", "failed": "Failed requests", "cancelled": "Cancelled (time bound)",
    "duration_s": "Duration (s)", "total_input_tokens": "Input tokens", "total_output_tokens": "Output tokens",
    "request_throughput": "Request throughput (req/s)", "request_goodput": "Request goodput (req/s)",
    "output_throughput": "Output token throughput (tok/s)", "total_token_throughput": "Total token throughput (tok/s)",
    "max_output_tokens_per_s": "Peak output tokens/s", "max_concurrent_requests": "Peak concurrent requests",
    "input_token_throughput": "Input token throughput (tok/s)",
}
INPUT_LABELS = {
    "embeddings": {"total_inputs": "Texts embedded", "input_throughput": "Embedding throughput (texts/s)"},
    "rerank": {"total_inputs": "Documents scored", "input_throughput": "Rerank throughput (docs/s)"},
}


def summary_fields(endpoint: str) -> tuple[str, ...]:
    return SUMMARY_FIELDS if is_streamed(endpoint) else POOLING_SUMMARY_FIELDS


def label(endpoint: str, key: str) -> str:
    return INPUT_LABELS.get(endpoint, {}).get(key) or LABELS[key]


def _usage_warning(endpoint: str, m: dict[str, Any]) -> str:
    if is_streamed(endpoint):
        missing = m["completed"] - m["output_tokens_from_usage"]
        what = "their output tokens are counted content chunks and their input tokens word-count estimates"
    else:
        missing = m["completed"] - m["input_tokens_from_usage"]
        what = "their input tokens are word-count estimates"
    return f"{missing} response(s) had no usage; {what}" if missing > 0 else ""


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
            usage_note = _usage_warning(result.config.endpoint, m)
            if usage_note:
                out.append(f"{lv.level.label} {name}: {usage_note}")
    return out


def _config_json(result: BenchResult, extra: dict[str, Any]) -> dict[str, Any]:
    c = result.config
    return {
        "targets": [{"name": t.name, "base_url": t.base_url, "model": t.model} for t in c.targets],
        "levels": [lv.label for lv in c.levels], "endpoint": c.endpoint, "requests_per_level": len(c.prompts),
        "warmup": c.warmup, "burstiness": c.burstiness, "seed": c.seed, "max_duration_s": c.max_duration,
        "percentiles": list(c.percentiles), "goodput_ms": c.goodput_ms, **_inputs_json(c), **extra,
    }


def inputs_per_request(config: BenchConfig) -> int:
    """Texts per embeddings request, documents per rerank request (0 for chat and completions)."""
    first = config.prompts[0] if config.prompts else None
    return len(first.texts) if isinstance(first, Batch) else 0


def _inputs_json(config: BenchConfig) -> dict[str, Any]:
    if config.endpoint == "embeddings":
        return {"batch": inputs_per_request(config)}
    if config.endpoint == "rerank":
        return {"documents": inputs_per_request(config)}
    return {}


def _level_json(lv: LevelResult) -> dict[str, Any]:
    return {"level": lv.level.label, "concurrency": lv.level.concurrency, "rate": lv.level.rate,
            "client": lv.client.summary(), "targets": lv.metrics}


def write_outputs(result: BenchResult, out_dir: Path, extra_config: dict[str, Any]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [r for lv in result.levels for r in lv.records]
    streamed = is_streamed(result.config.endpoint)
    if streamed:
        requests = [{**r.as_row(), "itl_ms": [round(g * 1000, 3) for g in r.itl]} for r in records]
    else:
        requests = [r.as_row(streamed=False) for r in records]
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
    _write_csv(paths[1], [r.as_row(streamed) for r in records])
    _write_csv(paths[2], summary_rows(result))
    return paths


def summary_rows(result: BenchResult) -> list[dict[str, Any]]:
    rows = []
    endpoint = result.config.endpoint
    for lv in result.levels:
        for name, m in lv.metrics.items():
            row: dict[str, Any] = {"level": lv.level.label, "concurrency": lv.level.concurrency,
                                   "rate": lv.level.rate, "target": name}
            row.update({k: m.get(k, "") for k in summary_fields(endpoint)})
            for metric in latency_metrics(endpoint):
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


def _metric_rows(metrics: dict[str, Any], endpoint: str) -> list[tuple[str, Any]]:
    rows = [(label(endpoint, k), metrics[k]) for k in summary_fields(endpoint) if k in metrics]
    for metric in latency_metrics(endpoint):
        for stat, value in metrics[f"{metric}_ms"].items():
            if stat not in ("std", "p50"):
                rows.append((f"{metric.upper()} {stat} (ms)", value))
    return rows


def kind_label(config: BenchConfig) -> str:
    """'' for chat and completions; 'embeddings, batch 8' or 'rerank, 16 documents' otherwise."""
    n = inputs_per_request(config)
    if config.endpoint == "embeddings":
        return f"embeddings, batch {n}"
    if config.endpoint == "rerank":
        return f"rerank, {n} documents"
    return ""


def level_table(lv: LevelResult, endpoint: str = "chat", kind: str = "") -> Table:
    names = list(lv.metrics)
    usage = lv.client.summary()
    prefix = f"{kind}, " if kind else ""
    table = Table(title=f"{prefix}{lv.level.label}  (client CPU {usage['client_cpu_pct']}% of a core, "
                        f"loop lag p99 {usage['loop_lag_p99_ms']} ms)", title_justify="left")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    for name in names[1:]:
        table.add_column(f"{name} / {names[0]}", justify="right")
    per_target = [_metric_rows(lv.metrics[n], endpoint) for n in names]
    for i, (label, base) in enumerate(per_target[0]):
        values = [rows[i][1] for rows in per_target]
        table.add_row(label, *(_fmt(v) for v in values), *(_ratio(v, base) for v in values[1:]))
    return table


def print_summary(result: BenchResult, console: Console) -> None:
    kind = kind_label(result.config)
    for lv in result.levels:
        console.print(level_table(lv, result.config.endpoint, kind))
    for warning in warnings_for(result):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
