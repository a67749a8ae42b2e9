from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard.bench.metrics import latency_metrics
from modelyard.bench.records import is_streamed
from modelyard.bench.runner import BenchResult

THROUGHPUT = (("request_throughput", "requests/s"), ("output_throughput", "output tokens/s"),
              ("total_token_throughput", "total tokens/s"))
POOLING_THROUGHPUT = {
    "embeddings": (("request_throughput", "requests/s"), ("input_throughput", "texts embedded/s"),
                   ("input_token_throughput", "input tokens/s")),
    "rerank": (("request_throughput", "requests/s"), ("input_throughput", "documents scored/s"),
               ("input_token_throughput", "input tokens/s")),
}


def _throughput(endpoint: str) -> tuple[tuple[str, str], ...]:
    return THROUGHPUT if is_streamed(endpoint) else POOLING_THROUGHPUT[endpoint]


def _x_label(result: BenchResult) -> str:
    first = result.config.levels[0]
    return "request rate (req/s per target)" if first.rate is not None else "concurrency (per target)"


def _series(result: BenchResult, target: str, key: str, stat: str | None = None) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    categorical = _categorical(result)
    for i, lv in enumerate(result.levels):
        m: Any = lv.metrics[target][key]
        xs.append(float(i) if categorical else lv.level.x)
        ys.append(float(m[stat] if stat else m))
    return xs, ys


def _categorical(result: BenchResult) -> bool:
    return any(lv.level.x == float("inf") for lv in result.levels)


def _axis(ax: Any, result: BenchResult, title: str, fontsize: int) -> None:
    ax.set_title(title)
    ax.set_xlabel(_x_label(result))
    xs = [lv.level.x for lv in result.levels]
    if _categorical(result):
        ax.set_xticks(range(len(result.levels)), [lv.level.label for lv in result.levels])
    elif min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=fontsize)


def write_plots(result: BenchResult, out_dir: Path) -> list[Path]:
    """latency.png (each latency's percentiles vs load) and throughput.png; one colour per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    endpoint = result.config.endpoint
    targets = [t.name for t in result.config.targets]
    stats = [f"p{p:g}" for p in result.config.percentiles]
    styles = ["-", "--", ":", "-."]
    metrics = latency_metrics(endpoint)
    grid, size = ((2, 2), (12, 8)) if len(metrics) == 4 else ((1, len(metrics)), (6 * len(metrics), 4.5))
    fig, axes = plt.subplots(*grid, figsize=size, constrained_layout=True, squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=True):
        for ti, name in enumerate(targets):
            for si, stat in enumerate(stats):
                xs, ys = _series(result, name, f"{metric}_ms", stat)
                ax.plot(xs, ys, styles[si % len(styles)], marker="o", color=f"C{ti}", label=f"{name} {stat}")
        _axis(ax, result, f"{metric.upper()} (ms)", 7)
    latency = out_dir / "latency.png"
    fig.savefig(latency, dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    for ax, (key, label) in zip(axes, _throughput(endpoint), strict=True):
        for ti, name in enumerate(targets):
            xs, ys = _series(result, name, key)
            ax.plot(xs, ys, marker="o", color=f"C{ti}", label=name)
        _axis(ax, result, label, 8)
    throughput = out_dir / "throughput.png"
    fig.savefig(throughput, dpi=110)
    plt.close(fig)
    return [latency, throughput]

