from __future__ import annotations

import asyncio

import orjson
import pytest

from modelyard.bench.client import _Stream, build_payload, read_answer
from modelyard.bench.records import Batch, Prompt, RequestRecord
from modelyard.bench.sse import SSEEvent

from .conftest import CHUNKS


def _ev(content: bool, usage: dict[str, int] | None = None) -> list[SSEEvent]:
    return [SSEEvent(has_content=content, usage=usage, error="")]


def test_ttft_is_first_content_chunk_and_latency_the_last() -> None:
    rec = RequestRecord(target="t", level="l", index=0)
    s = _Stream(10.0, rec)
    s.on_events(_ev(False), 10.2)  # role chunk: not a token
    s.on_events(_ev(True), 10.5)
    s.on_events(_ev(True) + _ev(True), 10.75)  # two events in one read share its time
    s.on_events(_ev(True), 11.0)
    s.on_events(_ev(False, {"prompt_tokens": 9, "completion_tokens": 4}), 11.5)  # usage after the last token
    s.finish()
    assert rec.success
    assert rec.ttft == pytest.approx(0.5)
    assert rec.itl == pytest.approx([0.25, 0.0, 0.25])
    assert rec.latency == pytest.approx(1.0)
    assert (rec.output_tokens, rec.output_tokens_source) == (4, "usage")
    assert (rec.prompt_tokens, rec.prompt_tokens_source) == (9, "usage")
    assert rec.tpot() == pytest.approx(0.5 / 3)


def test_tokens_counted_from_chunks_without_usage() -> None:
    rec = RequestRecord(target="t", level="l", index=0)
    s = _Stream(0.0, rec)
    for t in (0.1, 0.2, 0.3):
        s.on_events(_ev(True), t)
    s.finish()
    assert (rec.output_tokens, rec.output_tokens_source) == (3, "chunks")


def test_no_content_is_a_failure() -> None:
    rec = RequestRecord(target="t", level="l", index=0)
    s = _Stream(0.0, rec)
    s.on_events(_ev(False), 0.1)
    s.finish()
    assert not rec.success and "without a chunk" in rec.error


def test_payloads() -> None:
    p = Prompt(messages=({"role": "system", "content": "S"}, {"role": "user", "content": "Q"}), max_tokens=8,
               prompt_tokens_estimate=2)
    chat = build_payload("chat", "m", p, {"temperature": 0.0})
    assert chat["messages"][1] == {"role": "user", "content": "Q"} and chat["max_tokens"] == 8
    assert chat["stream_options"] == {"include_usage": True} and chat["temperature"] == 0.0
    comp = build_payload("completions", "m", p, {})
    assert comp["prompt"] == "S\n\nQ" and "messages" not in comp


def test_request_retried_once_when_the_connection_drops_before_a_response(sse_server: str) -> None:
    from modelyard.bench.client import encode_payload, send_request
    from modelyard.bench.targets import Target

    async def main() -> RequestRecord:
        import aiohttp

        target = Target("flaky", f"{sse_server}/flaky/v1", model="m")
        p = Prompt(messages=({"role": "user", "content": "q"},), max_tokens=4, prompt_tokens_estimate=1)
        rec = RequestRecord(target="flaky", level="l", index=0)
        async with aiohttp.ClientSession() as session:
            return await send_request(session, target, "chat", encode_payload(build_payload("chat", "m", p, {})),
                                      rec, 0.0)

    rec = asyncio.run(main())
    assert rec.success and rec.retries == 1 and rec.content_chunks == CHUNKS


def test_pooling_payloads() -> None:
    batch = Batch(texts=("a b", "c"), prompt_tokens_estimate=3)
    assert build_payload("embeddings", "m", batch, {}) == {"model": "m", "input": ["a b", "c"]}
    query = Batch(texts=("d1", "d2"), prompt_tokens_estimate=4, query="q")
    assert build_payload("rerank", "m", query, {}) == {"model": "m", "query": "q", "documents": ["d1", "d2"]}
    p = Prompt(messages=({"role": "user", "content": "Q"},), max_tokens=8, prompt_tokens_estimate=1)
    with pytest.raises(ValueError):
        build_payload("embeddings", "m", p, {})
    with pytest.raises(ValueError):
        build_payload("chat", "m", batch, {})


def _answer(endpoint: str, body: object, expected: int) -> RequestRecord:
    rec = RequestRecord(target="t", level="l", index=0, prompt_tokens=99, prompt_tokens_source="estimate")
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    read_answer(endpoint, raw, rec, expected)
    return rec


def test_embeddings_answer_counts_inputs_and_usage() -> None:
    body = {"data": [{"index": i, "embedding": [0.1]} for i in range(3)],
            "usage": {"prompt_tokens": 12, "total_tokens": 12}}
    rec = _answer("embeddings", body, 3)
    assert rec.success and rec.inputs == 3 and (rec.prompt_tokens, rec.prompt_tokens_source) == (12, "usage")
    rec = _answer("embeddings", {"data": [{"index": 0, "embedding": [0.1]}]}, 1)
    assert rec.success and (rec.prompt_tokens, rec.prompt_tokens_source) == (99, "estimate")


def test_rerank_answer_takes_total_tokens() -> None:
    body = {"results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1}],
            "usage": {"total_tokens": 20}}
    rec = _answer("rerank", body, 2)
    assert rec.success and rec.inputs == 2 and rec.prompt_tokens == 20


@pytest.mark.parametrize(("body", "error"), [
    (b"not json", "not JSON"),
    ({"error": {"message": "no"}}, "error in answer"),
    ({"results": [{"index": 0, "relevance_score": 0.5}]}, "expected 2 item(s) in 'results', got 1"),
    ({"data": []}, "in 'results', got no list"),
])
def test_bad_answers_fail(body: object, error: str) -> None:
    rec = _answer("rerank", body, 2)
    assert not rec.success and rec.inputs == 0 and error in rec.error

