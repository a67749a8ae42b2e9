"""A prompt's block keys as the engine computes them: its token ids from the engine's own `/tokenize` (one round
trip; the chat template is the engine's), then vLLM's block chain over them (modelyard/kv_hash.py).

The request body is vLLM's: chat messages (with `add_generation_prompt` and the template options the request
carries) or the completion prompt; a prompt of token ids needs no round trip. Answers are kept per prompt (an LRU
of `cache_size` entries, keyed by a 16-byte BLAKE2 digest of what was tokenized, holding the keys, not the tokens),
so a repeated prompt costs a digest. The client is a plain HTTP/1.1 POST with `Connection: close` on the engine's
loopback port (no session to own or close).

A model with its tokenizer loaded in the gateway (modelyard/local_tokenizer.py, `tokenizer: local`) gets the same
ids without the round trip (`local`; a prompt over INLINE_BYTES in a worker thread); an engine whose tokenize
takes text only (llama.cpp: `{"content": ...}`) has its chat template applied through its `template` path first.
Each answer also gives the prompt's token count (`prompt`, `count`: exact reservations for keys with token limits,
gateway/prompt_count.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from modelyard.kv_hash import BlockHasher
from modelyard.local_tokenizer import LocalTokenizer, TokenizerError

TIMEOUT_S = 2.0
INLINE_BYTES = 8192  # a local tokenizer takes prompts up to this size on the event loop (about 1 ms), longer ones in
# a worker thread
CHAT_OPTIONS = ("add_generation_prompt", "continue_final_message", "chat_template", "chat_template_kwargs", "tools")


class TokenizeError(Exception):
    pass


def tokenize_body(payload: Mapping[str, Any], model: str) -> dict[str, Any] | list[int] | None:
    """What /tokenize is asked (None: nothing to tokenize); a prompt of token ids is returned as it is."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        body: dict[str, Any] = {"model": model, "messages": messages}
        body.update({k: payload[k] for k in CHAT_OPTIONS if k in payload})
        return body
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    if isinstance(prompt, str):
        return {"model": model, "prompt": prompt}
    return None


async def post_json(base_url: str, path: str, body: bytes, timeout_s: float = TIMEOUT_S) -> Any:
    """POST a JSON body; the JSON answer of a 200, else TokenizeError."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, int(port or 80))
            try:
                writer.write(b"POST %b HTTP/1.1\r\nHost: %b\r\nContent-Type: application/json\r\nContent-Length: %d"
                             b"\r\nConnection: close\r\n\r\n%b" % (path.encode(), host.encode(), len(body), body))
                raw = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError) as exc:
        raise TokenizeError(f"{base_url}{path}: {type(exc).__name__}") from None
    head, _, content = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1] if head.count(b" ") >= 1 else b""
    if status != b"200":
        raise TokenizeError(f"{base_url}{path} answered {status.decode(errors='replace') or 'nothing'}")
    if b"\r\ntransfer-encoding: chunked" in head.lower():
        content = _dechunk(content)
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        raise TokenizeError(f"{base_url}{path}: not JSON") from None


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end == -1:
            raise TokenizeError("cut chunked answer")
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2:end + 2 + size])
        pos = end + 4 + size


class EngineTokens:
    """Block keys (and the token count) for one model's prompts through its engine's tokenizer, or its local one,
    cached per prompt."""

    def __init__(self, cache_size: int = 4096, max_blocks: int | None = None) -> None:
        self.cache_size, self.max_blocks = cache_size, max_blocks
        self._cache: OrderedDict[bytes, tuple[tuple[int, ...], int]] = OrderedDict()  # digest: (keys, tokens)
        self._hashers: dict[str, BlockHasher] = {}
        self.round_trips = 0

    def keys_of_tokens(self, tokens: Sequence[int], block_size: int, seed: str) -> tuple[int, ...]:
        hasher = self._hashers.get(seed)
        if hasher is None:
            hasher = self._hashers[seed] = BlockHasher(seed)
        return hasher.keys(tokens, block_size, self.max_blocks)

    async def keys(self, payload: Mapping[str, Any], model: str, base_url: str, path: str, block_size: int,
                   seed: str) -> tuple[int, ...]:
        return (await self.prompt(payload, model, base_url, path, block_size, seed))[0]

    async def count(self, payload: Mapping[str, Any], model: str, base_url: str = "", path: str = "",
                    local: LocalTokenizer | None = None, template: str | None = None) -> int | None:
        """The prompt's token count (None: nothing to tokenize)."""
        return (await self.prompt(payload, model, base_url, path, 0, "", local, template))[1] or None

    async def prompt(self, payload: Mapping[str, Any], model: str, base_url: str, path: str, block_size: int,
                     seed: str, local: LocalTokenizer | None = None,
                     template: str | None = None) -> tuple[tuple[int, ...], int]:
        """(block keys, token count); block_size 0: the count alone."""
        body = tokenize_body(payload, model)
        if body is None:
            return (), 0
        if isinstance(body, list):
            return (self.keys_of_tokens(body, block_size, seed) if block_size else ()), len(body)
        raw = orjson.dumps(body)
        digest = hashlib.blake2b(raw, digest_size=16, key=b"%d/%b" % (block_size, seed.encode())).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            self._cache.move_to_end(digest)
            return cached
        if local is not None:
            try:  # a long prompt in a thread (the library releases the GIL): the event loop keeps relaying
                tokens = await asyncio.to_thread(local.ids, body) if len(raw) > INLINE_BYTES else local.ids(body)
            except TokenizerError as exc:
                raise TokenizeError(f"{local.directory}: {exc}") from None
        else:
            self.round_trips += 1
            tokens = await self._engine_tokens(body, raw, base_url, path, template)
        entry = (self.keys_of_tokens(tokens, block_size, seed) if block_size else ()), len(tokens)
        self._cache[digest] = entry
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    async def _engine_tokens(self, body: dict[str, Any], raw: bytes, base_url: str, path: str,
                             template: str | None) -> list[int]:
        if template is not None:  # an engine whose tokenize takes text: its chat template first
            text = body.get("prompt")
            if "messages" in body:
                rendered = await post_json(base_url, template, raw)
                text = rendered.get("prompt") if isinstance(rendered, dict) else None
            if not isinstance(text, str):
                raise TokenizeError(f"{base_url}{template} answered no prompt")
            raw = orjson.dumps({"content": text, "add_special": True})
        answer = await post_json(base_url, path, raw)
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list):
            raise TokenizeError(f"{base_url}{path} answered no tokens")
        return tokens
