from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest
from aiohttp import web

CHUNKS = 5
PROMPT_TOKENS = 7
API_KEY = "sk-bench-test"
DELAY = web.AppKey("delay", float)
SEEN = web.AppKey("seen", list)


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


def _app(delay: float) -> web.Application:
    app = web.Application()
    app[DELAY] = delay
    app[SEEN] = []
    app.router.add_post("/flaky/v1/chat/completions", _drop_first)
    for prefix in ("/v1", "/nousage/v1"):
        app.router.add_get(f"{prefix}/models", _models)
        app.router.add_post(f"{prefix}/chat/completions", _stream)
        app.router.add_post(f"{prefix}/completions", _stream)
    return app


def _serve(delay: float) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_app(delay))
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
