from __future__ import annotations

from modelyard.bench.records import RequestRecord, is_streamed


def test_rows_of_unstreamed_requests_have_inputs_not_token_timings() -> None:
    rec = RequestRecord(target="t", level="l", index=0, inputs=4, latency=0.25)
    row = rec.as_row(streamed=False)
    assert row["inputs"] == 4 and row["e2el_ms"] == 250.0
    assert not {"ttft_ms", "tpot_ms", "content_chunks", "output_tokens"} & set(row)
    assert "ttft_ms" in rec.as_row() and "inputs" not in rec.as_row()


def test_streamed_endpoints() -> None:
    assert is_streamed("chat") and is_streamed("completions")
    assert not is_streamed("embeddings") and not is_streamed("rerank")
