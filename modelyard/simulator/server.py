from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from modelyard.local_tokenizer import LocalTokenizer
from modelyard.simulator.api import (
    ApiError,
    ChunkWriter,
    Generation,
    full_response,
    local_prompt,
    parse_generation,
    parse_json,
)
from modelyard.simulator.disagg import KVConnector, transfer_params
from modelyard.simulator.embeddings import Embedder, embedding_response, parse_embedding
from modelyard.simulator.kv_events import KVEventsConfig, Publisher
from modelyard.simulator.metrics import CONTENT_TYPE, EngineMetrics
from modelyard.simulator.profiles import Profile
from modelyard.simulator.rerank import parse_rerank, rerank_inputs, rerank_response
from modelyard.simulator.scheduler import Scheduler, Sequence
from modelyard.simulator.tokens import render_chat, token_strs, tokenize

JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
CRASH_EXIT_CODE = 70
Handler = Callable[[dict[str, Any], Scope, Receive, Send], Awaitable[None]]


def _exit_now() -> None:
    os._exit(CRASH_EXIT_CODE)


class Simulator:
    """The ASGI app of one simulated vLLM server: OpenAI API, vLLM's operational endpoints, faults."""

    def __init__(self, profile: Profile, model_name: str, crash: Callable[[], None] = _exit_now,
                 kv_events: KVEventsConfig | None = None, role: str | None = None,
                 tokenizer: LocalTokenizer | None = None) -> None:
        self.profile, self.model_name, self.crash = profile, model_name, crash
        self.tokenizer = tokenizer  # the model's own (--tokenizer): real token ids in /tokenize, the cache, events
        self.kv_events = kv_events
        self.publisher: Publisher | None = None
        self.metrics = EngineMetrics(model_name, profile.kv_blocks, profile.block_size)
        # prefill/decode disaggregation (simulator/disagg.py): None, a replica that serves whole requests
        self.connector = KVConnector(role, profile, self.metrics) if role is not None else None
        self.rng = random.Random(profile.seed)
        self.scheduler = Scheduler(profile, self.metrics, random.Random(profile.seed + 1))
        self.embedder = Embedder(profile.embedding_dim) if profile.task == "embedding" else None
        self.sleep_level = 0
        self.created = int(time.time())
        self._task: asyncio.Task[None] | None = None
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/health"): self._health,
            ("GET", "/v1/models"): self._models,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/version"): self._version,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("POST", "/rerank"): self._rerank,
            ("POST", "/v1/rerank"): self._rerank,
            ("POST", "/v2/rerank"): self._rerank,
            ("POST", "/tokenize"): self._tokenize,
            ("POST", "/detokenize"): self._detokenize,
            ("POST", "/v1/chat/completions/render"): self._render,
            ("POST", "/v1/completions/render"): self._render,
            ("POST", "/sleep"): self._sleep,
            ("POST", "/wake_up"): self._wake_up,
            ("GET", "/is_sleeping"): self._is_sleeping,
            ("POST", "/reset_prefix_cache"): self._reset_prefix_cache,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        handler = self._routes.get((scope["method"], scope["path"]))
        if handler is None:
            known = any(path == scope["path"] for _, path in self._routes)
            status = 405 if known else 404
            await respond(send, status, orjson.dumps({"detail": "Method Not Allowed" if known else "Not Found"}))
            return
        body: dict[str, Any] = {}
        if scope["method"] == "POST":
            raw = await read_body(receive)
            try:
                body = parse_json(raw) if raw.strip() else {}
            except ApiError as exc:
                await respond(send, exc.status, exc.body())
                return
        try:
            await handler(body, scope, receive, send)
        except ApiError as exc:
            await respond(send, exc.status, exc.body())

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.kv_events is not None:
                    self.publisher = Publisher(self.kv_events, self.profile.block_size)
                    self.scheduler.publish(self.publisher.publish)
                    self.publisher.start()
                self._task = asyncio.create_task(self.scheduler.run(), name="simulator scheduler")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._task is not None:
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
                if self.publisher is not None:
                    await self.publisher.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _health(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, b"", [])

    async def _version(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, b'{"version":"0.0.0+modelyard.simulator"}')

    async def _models(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        card = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "vllm",
                "root": self.model_name, "parent": None, "max_model_len": self.profile.max_model_len}
        await respond(send, 200, orjson.dumps({"object": "list", "data": [card]}))

    async def _metrics(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        s = self.scheduler
        text = self.metrics.render(len(s.running), len(s.waiting), s.cache.usage())
        await respond(send, 200, text, [(b"content-type", CONTENT_TYPE.encode())])

    def _check_serves(self, tasks: tuple[str, ...], api: str) -> None:
        """vLLM registers an API's routes only for a model whose task has it: others answer 404."""
        if self.profile.task not in tasks:
            raise ApiError(404, f"The model does not support {api} API")

    def _check_fits(self, prompt_len: int, max_tokens: int) -> None:
        profile = self.profile
        if self.scheduler.blocks_needed(prompt_len, max_tokens) > profile.kv_blocks:
            raise ApiError(400, f"the request needs more KV cache than the engine has ({profile.kv_blocks} blocks "
                                f"of {profile.block_size} tokens)", "max_tokens" if max_tokens else "input")

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise ApiError(404, f"The model `{model}` does not exist.", "model")

    def _prompt(self, body: dict[str, Any]) -> tuple[list[int], str]:
        tokenizer = self.tokenizer
        if tokenizer is not None:
            chat = "messages" in body
            tokens = local_prompt(body, chat, tokenizer) if chat or isinstance(body.get("prompt"), str) else None
            if tokens is None:
                raise ApiError(400, "give prompt (a string) or messages", "prompt")
            return tokens, ""
        if "messages" in body:
            messages = body["messages"]
            if not isinstance(messages, list):
                raise ApiError(400, "messages must be a list", "messages")
            try:
                text = render_chat(messages, bool(body.get("add_generation_prompt", True)))
            except ValueError as exc:
                raise ApiError(400, str(exc), "messages") from None
            return tokenize(text), text
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ApiError(400, "give prompt (a string) or messages", "prompt")
        return tokenize(prompt), prompt

    async def _tokenize(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        self._check_model(body)
        tokens, text = self._prompt(body)
        answer: dict[str, Any] = {"count": len(tokens), "max_model_len": self.profile.max_model_len,
                                  "tokens": tokens, "token_strs": self._token_strs(tokens, text)
                                  if body.get("return_token_strs") else None}
        await respond(send, 200, orjson.dumps(answer))

    def _token_strs(self, tokens: list[int], text: str) -> list[str]:
        if self.tokenizer is None:
            return token_strs(text)
        return [self.tokenizer.tokenizer.id_to_token(t) or "" for t in tokens]

    async def _detokenize(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        # hashed word pieces cannot be turned back into text; answer vLLM's shape with placeholders
        self._check_model(body)
        tokens = body.get("tokens")
        if not isinstance(tokens, list):
            raise ApiError(400, "tokens must be a list of token ids", "tokens")
        await respond(send, 200, orjson.dumps({"prompt": "".join(f"<{t}>" for t in tokens)}))

    async def _render(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        """vLLM's render endpoints: the request as the engine would get it (token ids and sampling params)."""
        chat = scope["path"].startswith("/v1/chat/")
        self._check_serves(("chat",), "Chat Completions" if chat else "Completions")
        self._check_model(body)
        gen = parse_generation(body, chat, self.profile.max_model_len, self.profile.default_max_tokens,
                               self.tokenizer)
        prefix = "chatcmpl-" if chat else "cmpl-"
        answer = {"request_id": prefix + os.urandom(8).hex(), "token_ids": gen.prompt_tokens, "features": None,
                  "sampling_params": {"max_tokens": gen.max_tokens,
                                      "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
                                      "stop": body.get("stop") or [], "n": 1}}
        await respond(send, 200, orjson.dumps(answer))

    async def _sleep(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        level = query_param(scope, "level", "1")
        if level not in ("1", "2"):
            raise ApiError(400, "level must be 1 or 2", "level")
        self.sleep_level = int(level)
        self.scheduler.pause()
        self.scheduler.cache.reset()
        self.scheduler.flush_events()
        await respond(send, 200, b"", [])

    async def _wake_up(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        if self.sleep_level:
            delay = self.profile.wake_level2_s if self.sleep_level == 2 else self.profile.wake_level1_s
            if delay > 0:
                await asyncio.sleep(delay)
            self.sleep_level = 0
            self.scheduler.resume()
        await respond(send, 200, b"", [])

    async def _is_sleeping(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, orjson.dumps({"is_sleeping": self.sleep_level > 0}))

    async def _reset_prefix_cache(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        """vLLM's dev endpoint: drops every cached block that no running request holds (benchmarks reset the
        cache between runs with it); held blocks stay, and the answer is 200 either way, as vLLM's."""
        self.scheduler.cache.reset()
        self.scheduler.flush_events()
        await respond(send, 200, b"", [])

    async def _completions(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(body, False, scope, receive, send)

    async def _chat(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        await self._generate(body, True, scope, receive, send)

    async def _generate(self, body: dict[str, Any], chat: bool, scope: Scope, receive: Receive, send: Send) -> None:
        self._check_serves(("chat",), "Chat Completions" if chat else "Completions")
        self._check_model(body)
        profile = self.profile
        gen = parse_generation(body, chat, profile.max_model_len, profile.default_max_tokens, self.tokenizer)
        self._check_fits(len(gen.prompt_tokens), gen.max_tokens)
        if self.sleep_level:
            raise ApiError(503, "The engine is sleeping; call /wake_up before sending requests.")
        connector = self.connector
        params = transfer_params(body) if connector is not None else None
        received = connector.receives(params) if connector is not None else None
        if profile.failure_rate > 0 and self.rng.random() < profile.failure_rate:
            await self._fail(self.rng.choice(profile.kinds()), scope, receive, send)
            return
        if connector is not None and received is not None:
            await connector.fetch(received)
        seq = Sequence(prompt_tokens=gen.prompt_tokens, max_tokens=gen.max_tokens,
                       stop_reason="length" if gen.capped else "stop", arrival=asyncio.get_running_loop().time(),
                       remote_prefill=received is not None)
        self.scheduler.submit(seq)
        watcher = asyncio.create_task(self._abort_on_disconnect([seq], receive))
        try:
            if gen.stream:
                await self._stream(gen, seq, send)
            else:
                while not seq.finished:
                    await seq.wait_beyond(seq.generated)
                if seq.finish_reason != "abort":
                    await respond(send, 200, self._answer(gen, seq, params, scope))
        finally:
            watcher.cancel()
            if not seq.finished:
                self.scheduler.abort(seq)

    def _answer(self, gen: Generation, seq: Sequence, params: dict[str, Any] | None, scope: Scope) -> bytes:
        """A non-streamed answer; with a role, it carries `kv_transfer_params` as vLLM's does (those of a prefill
        handed off, else null)."""
        connector = self.connector
        if connector is None:
            return full_response(gen, seq, self.model_name)
        handoff = None
        if connector.hands_off(params, gen.stream):
            handoff = connector.handoff(seq, scope, header(scope, b"x-request-id") or os.urandom(8).hex())
        return full_response(gen, seq, self.model_name, {"kv_transfer_params": handoff})

    async def _stream(self, gen: Generation, seq: Sequence, send: Send) -> None:
        writer = ChunkWriter(gen, seq, self.model_name)
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        opening = writer.opening()
        if opening:
            await send({"type": "http.response.body", "body": opening, "more_body": True})
        seq.sink = DirectWriter.attach(send, writer)
        while True:
            await seq.wait_beyond(writer.delivered)
            if seq.finish_reason == "abort":
                break
            chunk = writer.pending()
            writer.sending = True
            try:
                await send({"type": "http.response.body", "body": chunk, "more_body": not seq.finished})
            finally:
                writer.sending = False
            if seq.finished:
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _embeddings(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        self._check_serves(("embedding",), "Embeddings")
        self._check_model(body)
        request = parse_embedding(body, self.profile.max_model_len, self.profile.embedding_dim, self.model_name)
        if await self._pool(request.inputs, scope, receive, send):
            assert self.embedder is not None
            vectors = [self.embedder.embed(tokens) for tokens in request.inputs]
            await respond(send, 200, embedding_response(self.model_name, vectors, request))

    async def _rerank(self, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        self._check_serves(("embedding", "rerank"), "Rerank")
        self._check_model(body)
        request = parse_rerank(body)
        inputs = rerank_inputs(request, self.profile.task == "rerank", self.profile.max_model_len)
        if await self._pool(inputs, scope, receive, send):
            await respond(send, 200, rerank_response(self.model_name, request, sum(len(t) for t in inputs)))

    async def _pool(self, inputs: list[list[int]], scope: Scope, receive: Receive, send: Send) -> bool:
        """Runs embedding or rerank inputs through the engine, one prefill-only sequence each, batched and queued
        with every other request; False if the request got another answer (an injected fault) or was dropped."""
        for tokens in inputs:
            self._check_fits(len(tokens), 0)
        if self.sleep_level:
            raise ApiError(503, "The engine is sleeping; call /wake_up before sending requests.")
        profile = self.profile
        if profile.failure_rate > 0 and self.rng.random() < profile.failure_rate:
            await self._fail(self.rng.choice(profile.kinds()), scope, receive, send)
            return False
        arrival = asyncio.get_running_loop().time()
        seqs = [Sequence(prompt_tokens=tokens, max_tokens=0, stop_reason="stop", arrival=arrival, pooling=True)
                for tokens in inputs]
        for seq in seqs:
            self.scheduler.submit(seq)
        watcher = asyncio.create_task(self._abort_on_disconnect(seqs, receive))
        try:
            for seq in seqs:
                while not seq.finished:
                    await seq.wait_beyond(0)
        finally:
            watcher.cancel()
            for seq in seqs:
                if not seq.finished:
                    self.scheduler.abort(seq)
        return all(seq.finish_reason != "abort" for seq in seqs)

    async def _abort_on_disconnect(self, seqs: list[Sequence], receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        for seq in seqs:
            self.scheduler.abort(seq)

    async def _fail(self, kind: str, scope: Scope, receive: Receive, send: Send) -> None:
        if kind == "crash":
            self.crash()
            return
        if kind == "hang":
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        if kind == "drop":
            await drop_connection(send)
            return
        messages = {"500": "simulated engine failure", "429": "simulated overload: too many requests",
                    "503": "simulated unavailability"}
        raise ApiError(int(kind), messages[kind])


class DirectWriter:
    """Writes a stream's new tokens from the scheduler's step straight to uvicorn's transport, chunk-framed exactly
    as uvicorn's own `send` would, saving a task wake-up and an ASGI call per token. While the client is slow
    (transport paused) or gone, and at the end, it wakes the stream's coroutine, which goes on through `send`."""

    def __init__(self, cycle: Any, writer: ChunkWriter) -> None:
        self.cycle, self.writer = cycle, writer

    @classmethod
    def attach(cls, send: Send, writer: ChunkWriter) -> Callable[[], None] | None:
        cycle = getattr(send, "__self__", None)
        if (cycle is None or not type(cycle).__module__.startswith("uvicorn.protocols.http.")
                or getattr(cycle, "chunked_encoding", None) is not True
                or not all(hasattr(cycle, a) for a in ("transport", "flow", "disconnected", "response_complete"))):
            return None
        return cls(cycle, writer)

    def __call__(self) -> None:
        cycle, seq = self.cycle, self.writer.seq
        if (seq.finished or self.writer.sending or cycle.disconnected or cycle.response_complete
                or cycle.flow.write_paused):
            seq.notify()
            return
        body = self.writer.pending()
        if body:
            cycle.transport.write(b"%x\r\n%b\r\n" % (len(body), body))


async def drop_connection(send: Send) -> None:
    """Closes the connection without an answer (uvicorn's transport, reached from its send); otherwise cuts the
    response short after its headers."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        transport.abort()
        return
    await send({"type": "http.response.start", "status": 200, "headers": JSON})
    raise ConnectionAbortedError("simulated connection drop")


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message: Message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON if headers is None else headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def query_param(scope: Scope, name: str, default: str) -> str:
    raw: bytes = scope.get("query_string", b"")
    for pair in raw.decode("latin-1").split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return default
