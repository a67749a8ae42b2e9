"""A scriptable OpenAI-compatible upstream on a loopback port, run in a thread, for gateway tests."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from modelyard.fleet.process import free_port


class Upstream:
    def __init__(self, paths: tuple[str, ...] = ("/v1/completions", "/v1/chat/completions")) -> None:
        self.port = free_port()
        self.paths = paths  # what it serves; anything else is a 404, as aiohttp answers
        # ok | error500 | error501 | error503 | error400 | die_mid_stream | hang | slow_stream | stall_stream
        self.mode = "ok"
        self.aborted = threading.Event()  # set when a client (the gateway) closed a stream before its end
        self.requests = 0
        self.seen: list[str] = []  # the path of every request but the probes
        self.request_ids: list[str] = []  # their X-Request-Id headers
        self.probes_ok = True  # False: 1-token probes get `mode` too (a replica that stays broken)
        self.fail_next = 0  # the next this many requests (not probes) get a 503, whatever the mode
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Upstream:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        handlers = {"/v1/embeddings": self._embeddings, "/v1/rerank": self._rerank}
        for path in self.paths:
            app.router.add_post(path, handlers.get(path, self._completions))
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def _scripted(self, request: web.Request, probe: bool) -> tuple[str, web.Response | None]:
        """The mode this request gets, and the error answer when the mode is one."""
        mode = "ok" if probe and self.probes_ok else self.mode
        if not probe:
            self.requests += 1
            self.seen.append(request.path)
            self.request_ids.append(request.headers.get("X-Request-Id", ""))
            if self.fail_next > 0:
                self.fail_next -= 1
                mode = "error503"
        if mode.startswith("error"):
            status = int(mode[5:])
            return mode, web.json_response({"error": {"message": "boom", "code": status}}, status=status)
        return mode, None

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        _, error = self._scripted(request, body.get("input") == "Hi")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.6, 0.8]} for i in range(len(inputs))]
        tokens = 3 * len(inputs)
        return error or web.json_response({"object": "list", "data": data, "model": body["model"],
                                           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _rerank(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        _, error = self._scripted(request, body.get("query") == "Hi")
        results = [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(body["documents"]))]
        return error or web.json_response({"id": "r", "model": body["model"], "results": results,
                                           "usage": {"total_tokens": 7}})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        mode, error = self._scripted(request, body.get("max_tokens") == 1)
        if error is not None:
            return error
        if mode == "hang":  # no answer until the gateway closes the connection (60 s at most)
            for _ in range(1200):
                if request.transport is None or request.transport.is_closing():
                    self.aborted.set()
                    break
                await asyncio.sleep(0.05)
            return web.json_response({"error": {"message": "hung", "code": 500}}, status=500)
        if not body.get("stream"):
            return web.json_response({"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                                      "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if mode == "stall_stream":  # one chunk, then silence until the gateway closes the connection (60 s at most)
            await response.write(b'data: {"choices":[{"index":0,"text":"x"}]}\n\n')
            for _ in range(1200):
                if request.transport is None or request.transport.is_closing():
                    self.aborted.set()
                    break
                await asyncio.sleep(0.05)
            return response
        if mode == "slow_stream":
            try:
                for _ in range(600):
                    await response.write(b'data: {"choices":[{"index":0,"text":"x"}]}\n\n')
                    await asyncio.sleep(0.05)
            except (ConnectionError, RuntimeError):
                self.aborted.set()
            return response
        for index in range(4):
            chunk = (b'{"id":"x","object":"text_completion","created":0,"model":"m",'
                     b'"choices":[{"index":0,"text":"t%d"}]}')
            await response.write(b"data: " + chunk % index + b"\n\n")
            await asyncio.sleep(0.01)
            if mode == "die_mid_stream" and index == 1:
                assert request.transport is not None
                request.transport.abort()
                return response
        await response.write(b"data: [DONE]\n\n")
        return response
