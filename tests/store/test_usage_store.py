"""modelyard/store: usage records, reports and retention, on both backends."""

from __future__ import annotations

import time

from modelyard.store.base import KeyLimits, Store, UsageRecord
from tests.store.helpers import with_store


def _record(key: str, model: str, ts: float, prompt: int = 10, completion: int = 5, status: int = 200,
            error: str | None = None) -> UsageRecord:
    return UsageRecord(ts=ts, key_name=key, model=model, replica=f"{model}-0", prompt_tokens=prompt,
                       completion_tokens=completion, cached_tokens=2, ttft_s=0.1, e2e_s=0.5, status=status,
                       error=error)


def test_write_usage_adds_used_tokens_and_reports(store_url: str) -> None:
    now = time.time()

    async def body(store: Store) -> None:
        await store.create_key("a", KeyLimits())
        await store.create_key("b", KeyLimits())
        await store.write_usage([_record("a", "chat", now), _record("a", "coder", now),
                                 _record("b", "chat", now, status=502, error="upstream_error"),
                                 _record("a", "chat", now - 90_000)])
        a, b = await store.get_key("a"), await store.get_key("b")
        assert a is not None and b is not None and (a.used_tokens, b.used_tokens) == (45, 15)
        by_key = {r.group: r for r in await store.usage_report("key", now - 3600)}
        assert set(by_key) == {"a", "b"}
        assert (by_key["a"].requests, by_key["a"].prompt_tokens, by_key["a"].completion_tokens,
                by_key["a"].cached_tokens, by_key["a"].errors) == (2, 20, 10, 4, 0)
        assert by_key["b"].errors == 1 and by_key["a"].avg_ttft_s is not None
        by_model = {r.group: r.requests for r in await store.usage_report("model", now - 3600)}
        assert by_model == {"chat": 2, "coder": 1}
        assert await store.purge_usage(now - 3600) == 1
        assert sum(r.requests for r in await store.usage_report("key", 0)) == 3
    with_store(store_url, body)


def test_empty_batch_is_a_no_op(store_url: str) -> None:
    async def body(store: Store) -> None:
        await store.write_usage([])
        assert await store.usage_report("key", 0) == []
    with_store(store_url, body)


def test_estimated_rows_are_kept_and_counted_in_the_report(store_url: str) -> None:
    """Migration 5: a row the gateway charged by its own count says so."""
    now = time.time()

    async def body(store: Store) -> None:
        await store.create_key("a", KeyLimits())
        estimated = UsageRecord(ts=now, key_name="a", model="chat", prompt_tokens=9, completion_tokens=20,
                                error="client_disconnected", estimated=True)
        await store.write_usage([_record("a", "chat", now), estimated])
        (row,) = await store.usage_report("key", now - 60)
        assert (row.requests, row.estimated, row.completion_tokens) == (2, 1, 25)
        key = await store.get_key("a")
        assert key is not None and key.used_tokens == 44  # an estimate counts against the budget too
    with_store(store_url, body)
