from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web

CHUNKS = 5
PROMPT_TOKENS = 7
API_KEY = "sk-bench-test"
DELAY = web.AppKey("delay", float)
SEEN = web.AppKey("seen", list)
BODIES = web.AppKey("bodies", list)
FAILING_SEEN = web.AppKey("failing_seen", list)
EMBEDDING_DIM = 4


@dataclass
class FakeServer:
    url: str
    chunks: int = CHUNKS


def _event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})


async def _stream(request: web.Request) -> web.StreamResponse:
    usage = request.path.startswith("/v1")
    if usage and request.headers.get("Authorization") != f"Bearer {API_KEY}":
        return web.json_response({"error": {"message": "bad key", "type": "auth"}}, status=401)
    body = orjson.loads(await request.read())
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    chat = request.path.endswith("chat/completions")
    delay = float(request.query.get("delay", request.app[DELAY]))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    if chat:
        await resp.write(_event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}))
    for i in range(CHUNKS):
        await asyncio.sleep(delay)
        piece = {"delta": {"content": f"tok{i} "}} if chat else {"text": f"tok{i} "}
        await resp.write(_event({"choices": [{"index": 0, **piece, "finish_reason": None}], "usage": None}))
    await resp.write(_event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}))
    if usage:
        total = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": CHUNKS, "total_tokens": PROMPT_TOKENS + CHUNKS}
        await resp.write(_event({"choices": [], "usage": total}))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _drop_first(request: web.Request) -> web.StreamResponse:
    """Closes the connection of its first request without answering, as a server does to a stale keep-alive one."""
    seen = request.app[SEEN]
    seen.append(request.path)
    if len(seen) == 1:
        assert request.transport is not None
        request.transport.close()
        raise web.HTTPInternalServerError()
    return await _stream(request)


def _words(text: str) -> int:
    return len(text.split())


async def _pooling(request: web.Request) -> web.Response:
    """Embeddings and rerank in the OpenAI / vLLM shapes. /v1 needs API_KEY and sends usage, /nousage/v1 sends none;
    /failing/v1 answers every second request it gets with HTTP 500; /short/v1 leaves out the last item."""
    prefix = request.path.split("/v1/")[0]
    if prefix == "" and request.headers.get("Authorization") != f"Bearer {API_KEY}":
        return web.json_response({"error": {"message": "bad key", "type": "auth"}}, status=401)
    body = orjson.loads(await request.read())
    request.app[BODIES].append(body)
    if prefix == "/failing":
        request.app[FAILING_SEEN].append(body)
        if len(request.app[FAILING_SEEN]) % 2 == 0:
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
    await asyncio.sleep(request.app[DELAY])
    embeddings = request.path.endswith("/embeddings")
    if embeddings:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        items = [{"object": "embedding", "index": i, "embedding": [0.5] * EMBEDDING_DIM} for i in range(len(texts))]
        tokens = sum(_words(t) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    else:
        query, docs = body["query"], body["documents"]
        items = [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(docs))]
        usage = {"total_tokens": sum(_words(query) + _words(d) for d in docs)}
    if prefix == "/short":
        items = items[:-1]
    doc: dict[str, object] = {"model": body["model"], "data" if embeddings else "results": items}
    if prefix == "":
        doc["usage"] = usage
    return web.json_response(doc)


def _app(delay: float) -> web.Application:
    app = web.Application()
    app[DELAY] = delay
    app[SEEN] = []
    app[BODIES] = []
    app[FAILING_SEEN] = []
    app.router.add_post("/flaky/v1/chat/completions", _drop_first)
    for prefix in ("/v1", "/nousage/v1"):
        app.router.add_post(f"{prefix}/chat/completions", _stream)
        app.router.add_post(f"{prefix}/completions", _stream)
    for prefix in ("/v1", "/nousage/v1", "/failing/v1", "/short/v1"):
        app.router.add_get(f"{prefix}/models", _models)
        app.router.add_post(f"{prefix}/embeddings", _pooling)
        app.router.add_post(f"{prefix}/rerank", _pooling)
    return app


@dataclass
class PoolingServer:
    url: str
    bodies: list[dict[str, Any]]


def _serve(delay: float) -> Iterator[str]:
    yield from _serve_app(_app(delay))


def _serve_app(app: web.Application) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def sse_server() -> Iterator[str]:
    """An OpenAI-like streaming server on 127.0.0.1 (free port): /v1 needs API_KEY and sends usage,
    /nousage/v1 needs no key and sends none."""
    yield from _serve(delay=0.001)


@pytest.fixture
def slow_sse_server() -> Iterator[str]:
    yield from _serve(delay=0.05)


@pytest.fixture
def pooling_server() -> Iterator[PoolingServer]:
    """The same server, for /v1/embeddings and /v1/rerank; `bodies` holds every request body it received."""
    app = _app(delay=0.001)
    for base in _serve_app(app):
        yield PoolingServer(url=base, bodies=app[BODIES])
