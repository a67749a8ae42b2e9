from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from modelyard.bench.records import Batch, Endpoint, Prompt, RequestRecord, Work, is_streamed
from modelyard.bench.sse import SSEBuffer, SSEEvent
from modelyard.bench.targets import Target

__all__ = ["Endpoint", "build_payload", "encode_payload", "first_model", "send_request"]

PATHS: dict[str, str] = {"chat": "chat/completions", "completions": "completions", "embeddings": "embeddings",
                         "rerank": "rerank"}
# what each answer lists, one item per input: embeddings' `data`, rerank's `results`
RESULT_LISTS: dict[str, str] = {"embeddings": "data", "rerank": "results"}
Once = Callable[[aiohttp.ClientSession, str, Target, bytes, RequestRecord, float], Awaitable[None]]


def build_payload(endpoint: Endpoint, model: str, work: Work, extra: dict[str, Any]) -> dict[str, Any]:
    if is_streamed(endpoint) != isinstance(work, Prompt):
        raise ValueError(f"--endpoint {endpoint} cannot send a {type(work).__name__}")
    if isinstance(work, Batch):
        return _batch_payload(endpoint, model, work, extra)
    return _prompt_payload(endpoint, model, work, extra)


def _batch_payload(endpoint: Endpoint, model: str, batch: Batch, extra: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model}
    if endpoint == "embeddings":
        payload["input"] = list(batch.texts)
    else:
        payload["query"], payload["documents"] = batch.query, list(batch.texts)
    payload.update(extra)
    return payload


def _prompt_payload(endpoint: Endpoint, model: str, prompt: Prompt, extra: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "max_tokens": prompt.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint == "chat":
        payload["messages"] = list(prompt.messages)
    else:
        payload["prompt"] = prompt.as_text()
    payload.update(extra)
    return payload


class _Stream:
    """Per-request timing state, following vLLM's request functions: TTFT at the first chunk with content,
    ITL between content chunks, latency up to the last content chunk."""

    __slots__ = ("start", "last", "first", "record")

    def __init__(self, start: float, record: RequestRecord) -> None:
        self.start = start
        self.last = start
        self.first = False
        self.record = record

    def on_events(self, events: list[SSEEvent], now: float) -> None:
        rec = self.record
        for event in events:
            if event.error:
                rec.error = event.error
            if event.usage is not None:
                completion = event.usage.get("completion_tokens")
                prompt = event.usage.get("prompt_tokens")
                if isinstance(completion, int):
                    rec.output_tokens, rec.output_tokens_source = completion, "usage"
                if isinstance(prompt, int):
                    rec.prompt_tokens, rec.prompt_tokens_source = prompt, "usage"
            if not event.has_content:
                continue
            rec.content_chunks += 1
            if not self.first:
                self.first = True
                rec.ttft = now - self.start
            else:
                rec.itl.append(now - self.last)
            self.last = now

    def finish(self) -> None:
        rec = self.record
        rec.latency = self.last - self.start
        if rec.output_tokens_source != "usage":
            rec.output_tokens, rec.output_tokens_source = rec.content_chunks, "chunks"
        if rec.error:
            rec.success = False
        elif not self.first:
            rec.error = "stream ended without a chunk with content"
        else:
            rec.success = True


STALE_CONNECTION_ERRORS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


async def _stream_once(session: aiohttp.ClientSession, url: str, target: Target, payload: bytes,
                       record: RequestRecord, clock_zero: float) -> None:
    start = time.perf_counter()
    record.start_s = start - clock_zero
    state = _Stream(start, record)
    async with session.post(url, data=payload, headers=target.headers()) as resp:
        record.status = resp.status
        if resp.status != 200:
            body = await resp.content.read(2000)
            record.error = f"HTTP {resp.status}: {body.decode('utf-8', 'replace')}"
            return
        buffer = SSEBuffer()
        async for data in resp.content.iter_any():
            state.on_events(buffer.feed(data), time.perf_counter())
        state.on_events(buffer.flush(), time.perf_counter())
        state.finish()


def read_answer(endpoint: str, body: bytes, record: RequestRecord, expected: int) -> None:
    """Check an embeddings or rerank answer: one item per input sent (`record.inputs` counts them), tokens from
    its usage (rerank servers often give only `total_tokens`)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        record.error = f"answer is not JSON: {body[:200].decode('utf-8', 'replace')}"
        return
    if not isinstance(doc, dict) or "error" in doc:
        record.error = f"error in answer: {body[:300].decode('utf-8', 'replace')}"
        return
    items = doc.get(RESULT_LISTS[endpoint])
    if not isinstance(items, list) or len(items) != expected:
        got = len(items) if isinstance(items, list) else "no list"
        record.error = f"expected {expected} item(s) in {RESULT_LISTS[endpoint]!r}, got {got}"
        return
    usage = doc.get("usage")
    if isinstance(usage, dict):
        tokens = usage.get("prompt_tokens", usage.get("total_tokens"))
        if isinstance(tokens, int):
            record.prompt_tokens, record.prompt_tokens_source = tokens, "usage"
    record.inputs, record.success = expected, True


def _unary(endpoint: str, expected: int) -> Once:
    async def once(session: aiohttp.ClientSession, url: str, target: Target, payload: bytes, record: RequestRecord,
                   clock_zero: float) -> None:
        start = time.perf_counter()
        record.start_s = start - clock_zero
        async with session.post(url, data=payload, headers=target.headers()) as resp:
            record.status = resp.status
            body = await resp.read()
        record.latency = time.perf_counter() - start
        if record.status != 200:
            record.error = f"HTTP {record.status}: {body[:2000].decode('utf-8', 'replace')}"
            return
        read_answer(endpoint, body, record, expected)

    return once


async def send_request(
    session: aiohttp.ClientSession,
    target: Target,
    endpoint: Endpoint,
    payload: bytes,
    record: RequestRecord,
    clock_zero: float,
    inputs: int = 0,
) -> RequestRecord:
    """Send one request (streamed for chat and completions; for embeddings and rerank, one answer that must list
    `inputs` items); fills and returns `record`. Never raises except on cancellation.

    A pooled connection that the server closed while idle fails before any response; that request is sent once
    more on a fresh connection, with its clock restarted, and counted in `record.retries`."""
    url = target.url(PATHS[endpoint])
    once: Once = _stream_once if is_streamed(endpoint) else _unary(endpoint, inputs)
    try:
        while True:
            try:
                await once(session, url, target, payload, record, clock_zero)
                break
            except STALE_CONNECTION_ERRORS:
                if record.status or record.retries:
                    raise
                record.retries += 1
    except asyncio.CancelledError:
        record.cancelled, record.success = True, False
        record.error = record.error or "cancelled at the end of the time bound"
        record.done_s = time.perf_counter() - clock_zero
        raise
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        record.success = False
        record.error = f"{type(exc).__name__}: {exc}"
    record.done_s = time.perf_counter() - clock_zero
    return record


def encode_payload(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)


async def first_model(session: aiohttp.ClientSession, target: Target) -> str:
    try:
        async with session.get(target.url("models"), headers=target.headers()) as resp:
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise RuntimeError(f"{target.name}: cannot reach {target.url('models')}: {exc}") from exc
    if status != 200:
        raise RuntimeError(f"{target.name}: GET {target.url('models')} -> HTTP {status}: {body[:300]!r}")
    data = orjson.loads(body)
    models = data.get("data") or []
    if not models:
        raise RuntimeError(f"{target.name}: {target.url('models')} lists no models; pass --model")
    return str(models[0]["id"])
