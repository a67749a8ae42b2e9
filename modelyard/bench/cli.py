from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from modelyard.bench import datasets
from modelyard.bench.load import LoadLevel, parse_levels
from modelyard.bench.metrics import GOODPUT_KEYS, latency_metrics, parse_goodput, parse_percentiles
from modelyard.bench.records import ENDPOINTS, Prompt, RequestRecord, Work, is_streamed
from modelyard.bench.runner import BenchConfig, run_bench
from modelyard.bench.targets import Target, TargetError, parse_models, parse_targets

DATASETS = ("mtbench", "random", "shared-prefix", "jsonl")
EPILOG = """\b
Targets: --target [NAME=]URL[@ENVVAR], URL being the OpenAI base (http://HOST:PORT/v1). The API key comes from
$ENVVAR when given, else --api-key, else $OPENAI_API_KEY. Several targets run in one interleaved run with the same
prompts and the same load each (--concurrency 4 means 4 in flight to each target); the summary prints each
metric's ratio to the first target.

\b
Examples:
  modelyard bench --target http://127.0.0.1:8080/v1 --concurrency 1,4,16 --num-requests 200
  modelyard bench --target direct=http://127.0.0.1:8081/v1 --target gateway=http://127.0.0.1:8080/v1@YARD_KEY \\
      --rate 1,2,4 --burstiness 0.5 --goodput ttft:500,tpot:50 --dataset shared-prefix
  modelyard bench --target direct=http://127.0.0.1:9001/v1 --target gateway=http://127.0.0.1:8080/v1 \\
      --endpoint embeddings --batch 16 --dataset random --input-len 128 --concurrency 1,8
  modelyard bench --target http://127.0.0.1:9001/v1 --endpoint rerank --documents 32 --concurrency 4
\b
Metrics are those of `vllm bench serve`; see docs/bench.md."""


def _dataset(kw: dict[str, Any], n: int) -> list[Prompt]:
    name, out_len = kw["dataset"], kw["output_len"]
    if name == "mtbench":
        return datasets.mtbench(out_len)
    if name == "random":
        ratio = kw["range_ratio"]
        return datasets.random_prompts(n, datasets.LengthSpec(kw["input_len"], ratio),
                                       datasets.LengthSpec(out_len, ratio), kw["seed"])
    if name == "shared-prefix":
        groups, convs, turns = kw["prefix_groups"], kw["prefix_conversations"], kw["prefix_turns"]
        spec = datasets.SharedPrefixSpec(groups=groups, system_tokens=kw["prefix_len"], conversations_per_group=convs,
                                         turns=turns, question_tokens=kw["input_len"], output_len=out_len,
                                         answer_tokens=out_len)
        return datasets.shared_prefix(spec, kw["seed"])
    if not kw["dataset_path"]:
        raise click.UsageError("--dataset jsonl needs --dataset-path FILE")
    return datasets.jsonl(Path(kw["dataset_path"]), out_len)


def _per_request(kw: dict[str, Any]) -> int:
    """Inputs per request: --batch for embeddings (default 1), --documents for rerank (default 8)."""
    endpoint = kw["endpoint"]
    for flag, key, kind in (("--batch", "batch", "embeddings"), ("--documents", "documents", "rerank")):
        if kw[key] is not None and endpoint != kind:
            raise click.UsageError(f"{flag} applies to --endpoint {kind} only")
    if endpoint == "embeddings":
        return int(kw["batch"] or 1)
    if endpoint == "rerank":
        return int(kw["documents"] or 8)
    return 0


def _work(kw: dict[str, Any]) -> list[Work]:
    """Chat and completions send one prompt a request; embeddings and rerank group the dataset's texts."""
    n, endpoint, per = kw["num_requests"], kw["endpoint"], _per_request(kw)
    if is_streamed(endpoint):
        return list(datasets.cycle(_dataset(kw, n), n))
    query = endpoint == "rerank"
    texts = _dataset(kw, n * (per + (1 if query else 0)))
    return list(datasets.batches(texts, n, per, query=query))


def _progress_hook(progress: Progress) -> Callable[[LoadLevel, Sequence[Target], int], Callable[[RequestRecord], None]]:
    def hook(level: LoadLevel, targets: Sequence[Target], total: int) -> Callable[[RequestRecord], None]:
        ids = {t.name: progress.add_task(f"{level.label} {t.name}", total=total) for t in targets}

        def on_done(rec: RequestRecord) -> None:
            progress.advance(ids[rec.target])

        return on_done

    return hook


def _config(kw: dict[str, Any]) -> BenchConfig:
    try:
        targets = parse_targets(kw["target"], kw["api_key"] or os.environ.get("OPENAI_API_KEY"))
        models = parse_models(kw["model"], targets)
        targets = [Target(t.name, t.base_url, t.api_key, models.get(t.name, "")) for t in targets]
        levels = parse_levels(kw["concurrency"], kw["rate"])
        percentiles = parse_percentiles(kw["percentiles"])
        streamed = is_streamed(kw["endpoint"])
        goodput = parse_goodput(kw["goodput"], GOODPUT_KEYS if streamed else latency_metrics(kw["endpoint"]))
        prompts = _work(kw)
    except (TargetError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    extra: dict[str, Any] = {"temperature": kw["temperature"]} if streamed else {}
    if kw["ignore_eos"] and streamed:
        extra["ignore_eos"] = True
    return BenchConfig(targets=tuple(targets), levels=tuple(levels), prompts=tuple(prompts), endpoint=kw["endpoint"],
                       warmup=kw["warmup"], burstiness=kw["burstiness"], seed=kw["seed"],
                       max_duration=kw["max_duration"], drain_s=kw["drain_timeout"],
                       request_timeout_s=kw["request_timeout"], percentiles=percentiles, goodput_ms=goodput,
                       extra_body=extra, alternate=kw["alternate"])


def _opt(*names: str, **kw: Any) -> Callable[[Any], Any]:
    return click.option(*names, show_default="default" in kw, **kw)


@click.command("bench", epilog=EPILOG, context_settings={"max_content_width": 120})
@_opt("--target", "target", multiple=True, required=True, help="[NAME=]URL[@ENVVAR]; repeat to compare targets.")
@_opt("--api-key", default=None, help="Bearer key for targets without @ENVVAR (default: $OPENAI_API_KEY).")
@_opt("--model", multiple=True, default=(), help="Model for all targets, or TARGET=MODEL (default: first of /models).")
@_opt("--endpoint", type=click.Choice(ENDPOINTS), default="chat",
      help="API to call: chat, completions (streamed); embeddings, rerank (one JSON answer each).")
@_opt("--batch", type=click.IntRange(1), default=None, help="embeddings: texts per request (default 1).")
@_opt("--documents", type=click.IntRange(1), default=None,
      help="rerank: documents per request, scored against one query (default 8).")
@_opt("--dataset", type=click.Choice(DATASETS), default="mtbench", help="Prompt source (all offline).")
@_opt("--dataset-path", type=click.Path(exists=True, dir_okay=False), help="JSONL file for --dataset jsonl.")
@_opt("--num-requests", type=click.IntRange(1), default=100, help="Requests per target at each load level.")
@_opt("--concurrency", default=None, help="Closed loop: requests in flight per target, a sweep like 1,4,16 "
      "(with --rate: one value, a cap). Default 1.")
@_opt("--rate", default=None, help="Open loop: request rate per target (req/s), a sweep like 1,2,4; 'inf' sends all.")
@_opt("--alternate", is_flag=True, default=False,
      help="Closed loop: each request goes to every target in turn, one after the other, instead of loading all "
           "targets at once; for targets that share one engine.")
@_opt("--burstiness", type=click.FloatRange(min=0, min_open=True), default=1.0,
      help="Gamma shape of inter-arrival gaps: 1 is Poisson, <1 burstier, >1 more even.")
@_opt("--warmup", type=click.IntRange(0), default=2, help="Requests per target before measuring (excluded).")
@_opt("--max-duration", type=click.FloatRange(min=0, min_open=True), default=None,
      help="Seconds per load level after which no request is sent; in-flight ones get --drain-timeout more.")
@_opt("--drain-timeout", type=click.FloatRange(min=0), default=30.0, help="Seconds to finish in-flight requests.")
@_opt("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=600.0, help="Per request, seconds.")
@_opt("--input-len", type=click.IntRange(1), default=256,
      help="random: words per prompt (embeddings, rerank: per text); shared-prefix: question words.")
@_opt("--output-len", type=click.IntRange(1), default=128, help="max_tokens (a JSONL line may set its own).")
@_opt("--range-ratio", type=click.FloatRange(0, 1), default=0.0, help="random: lengths uniform in mean*(1±ratio).")
@_opt("--prefix-groups", type=click.IntRange(1), default=4, help="shared-prefix: groups (system prompts).")
@_opt("--prefix-len", type=click.IntRange(1), default=1024, help="shared-prefix: system prompt words.")
@_opt("--prefix-conversations", type=click.IntRange(1), default=8, help="shared-prefix: conversations per group.")
@_opt("--prefix-turns", type=click.IntRange(1), default=3, help="shared-prefix: user turns per conversation.")
@_opt("--ignore-eos", is_flag=True, help="Ask the server to generate max_tokens (vLLM, llama.cpp).")
@_opt("--temperature", type=float, default=0.0, help="Sampling temperature sent with each request.")
@_opt("--percentiles", default="50,90,99", help="Latency percentiles to report.")
@_opt("--goodput", multiple=True, default=(),
      help="SLOs in ms, e.g. 'ttft:500,tpot:50,e2el:2000' (repeatable; embeddings and rerank: e2el only).")
@_opt("--seed", type=int, default=0, help="Seed for prompts and arrival times.")
@_opt("--output-dir", type=click.Path(file_okay=False), default=None, help="Default bench-results/<timestamp>.")
@_opt("--no-plots", is_flag=True, help="Skip the PNG plots.")
@_opt("--no-progress", is_flag=True, help="No live progress bar.")
def bench(**kw: Any) -> None:
    """Load-test OpenAI-compatible endpoints: TTFT, TPOT, ITL, E2EL, throughput and goodput, side by side
    (embeddings and rerank: requests/s, inputs/s, E2EL)."""
    config = _config(kw)
    console = Console()
    out_dir = Path(kw["output_dir"] or f"bench-results/{dt.datetime.now():%Y%m%d-%H%M%S}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, disable=kw["no_progress"])
    try:
        with progress:
            result = asyncio.run(run_bench(config, _progress_hook(progress)))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    from modelyard.bench.report import print_summary, write_outputs

    print_summary(result, console)
    extra = {"dataset": kw["dataset"], "dataset_path": kw["dataset_path"], "extra_body": config.extra_body}
    paths = write_outputs(result, out_dir, extra)
    if not kw["no_plots"]:
        from modelyard.bench.plots import write_plots

        paths += write_plots(result, out_dir)
    console.print(f"results in {out_dir}: " + ", ".join(p.name for p in paths), highlight=False)
