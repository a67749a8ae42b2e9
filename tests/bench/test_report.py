from __future__ import annotations

from rich.console import Console

from modelyard.bench.load import LoadLevel
from modelyard.bench.metrics import compute_metrics, compute_pooling_metrics
from modelyard.bench.monitor import ClientUsage
from modelyard.bench.records import Batch, Endpoint, Prompt, RequestRecord
from modelyard.bench.report import kind_label, level_table, summary_rows
from modelyard.bench.runner import BenchConfig, BenchResult, LevelResult
from modelyard.bench.targets import Target


def _render(lv: LevelResult, endpoint: str) -> str:
    console = Console(width=200, record=True)
    console.print(level_table(lv, endpoint))
    return console.export_text()


def _result(endpoint: Endpoint) -> BenchResult:
    targets = (Target("a", "http://a/v1"), Target("b", "http://b/v1"))
    rec = RequestRecord(target="a", level="c=1", index=0, done_s=1.0, success=True, latency=0.5, inputs=8,
                        ttft=0.1, output_tokens=3, prompt_tokens=10, prompt_tokens_source="usage",
                        output_tokens_source="usage")
    pooled = endpoint in ("embeddings", "rerank")
    compute = compute_pooling_metrics if pooled else compute_metrics
    work: tuple[Batch | Prompt, ...] = (Batch(texts=("x",) * 8, prompt_tokens_estimate=8),) if pooled else (
        Prompt(messages=({"role": "user", "content": "q"},), max_tokens=3, prompt_tokens_estimate=1),)
    level = LevelResult(level=LoadLevel(1), records=[rec], client=ClientUsage(),
                        metrics={"a": compute([rec], 1.0), "b": compute([rec], 1.0)})
    config = BenchConfig(targets=targets, levels=(LoadLevel(1),), prompts=work, endpoint=endpoint)
    return BenchResult(config=config, levels=[level], warmup_records=[])


def test_chat_table_keeps_token_metrics() -> None:
    result = _result("chat")
    text = _render(result.levels[0], "chat")
    assert "TTFT p99 (ms)" in text and "TPOT mean (ms)" in text and "Output token throughput" in text
    assert "Texts embedded" not in text and kind_label(result.config) == ""
    assert "ttft_p99_ms" in summary_rows(result)[0]


def test_embeddings_and_rerank_tables_show_inputs_not_tokens_out() -> None:
    cases: tuple[tuple[Endpoint, str, str], ...] = (("embeddings", "Texts embedded", "Embedding throughput (texts/s)"),
                                                    ("rerank", "Documents scored", "Rerank throughput (docs/s)"))
    for endpoint, inputs, rate in cases:
        result = _result(endpoint)
        text = _render(result.levels[0], endpoint)
        assert inputs in text and rate in text and "E2EL p90 (ms)" in text and "b / a" in text
        for absent in ("TTFT", "TPOT", "ITL", "Output tokens", "Peak output tokens/s"):
            assert absent not in text
        row = summary_rows(result)[0]
        assert row["total_inputs"] == 8 and "e2el_p99_ms" in row
        assert not [k for k in row if k.startswith(("ttft", "tpot", "itl", "output"))]
    assert kind_label(_result("embeddings").config) == "embeddings, batch 8"
    assert kind_label(_result("rerank").config) == "rerank, 8 documents"
