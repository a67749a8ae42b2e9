from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import aiohttp
import orjson

from modelyard.bench.records import Prompt, RequestRecord
from modelyard.bench.sse import SSEBuffer, SSEEvent
from modelyard.bench.targets import Target

Endpoint = Literal["chat", "completions"]


def build_payload(endpoint: Endpoint, model: str, prompt: Prompt, extra: dict[str, Any]) -> dict[str, Any]:
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


async def send_request(
    session: aiohttp.ClientSession,
    target: Target,
    endpoint: Endpoint,
    payload: bytes,
    record: RequestRecord,
    clock_zero: float,
) -> RequestRecord:
    """Stream one request; fills and returns `record`. Never raises except on cancellation.

    A pooled connection that the server closed while idle fails before any response; that request is sent once
    more on a fresh connection, with its clock restarted, and counted in `record.retries`."""
    url = target.url("chat/completions" if endpoint == "chat" else "completions")
    try:
        while True:
            try:
                await _stream_once(session, url, target, payload, record, clock_zero)
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
