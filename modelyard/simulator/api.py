from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from modelyard.local_tokenizer import LocalTokenizer, TokenizerError
from modelyard.simulator.scheduler import Sequence
from modelyard.simulator.tokens import FILLER_JSON, filler_start, filler_text, render_chat, tokenize

DONE = b"data: [DONE]\n\n"


class ApiError(Exception):
    """An OpenAI-shaped error answer, as vLLM gives it."""

    TYPES = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError", 500: "InternalServerError",
             503: "ServiceUnavailableError"}

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> bytes:
        kind = self.TYPES.get(self.status, "APIError")
        return orjson.dumps({"error": {"message": self.message, "type": kind, "param": self.param,
                                       "code": self.status}})


@dataclass
class Generation:
    """A parsed /v1/completions or /v1/chat/completions request."""

    chat: bool
    prompt_tokens: list[int]
    max_tokens: int
    capped: bool
    stream: bool
    include_usage: bool


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def local_prompt(body: dict[str, Any], chat: bool, tokenizer: LocalTokenizer) -> list[int] | None:
    """The token ids by the model's own tokenizer (`--tokenizer`), as vLLM makes them; None: a prompt of ids."""
    try:
        if chat:
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                raise ApiError(400, "messages must be a non-empty list", "messages")
            return tokenizer.chat_ids(body)
        if isinstance(body.get("prompt"), str):
            return tokenizer.prompt_ids(body)
    except TokenizerError as exc:
        raise ApiError(400, str(exc), "messages" if chat else "prompt") from None
    return None


def prompt_of(body: dict[str, Any], chat: bool, tokenizer: LocalTokenizer | None = None) -> list[int]:
    if tokenizer is not None and (local := local_prompt(body, chat, tokenizer)) is not None:
        return local
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list", "messages")
        try:
            return tokenize(render_chat(messages, bool(body.get("add_generation_prompt", True))))
        except ValueError as exc:
            raise ApiError(400, str(exc), "messages") from None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return tokenize(prompt)
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    raise ApiError(400, "prompt must be a string or a list of token ids (one prompt only)", "prompt")


def parse_generation(body: dict[str, Any], chat: bool, max_model_len: int, default_max_tokens: int,
                     tokenizer: LocalTokenizer | None = None) -> Generation:
    tokens = prompt_of(body, chat, tokenizer)
    if body.get("n", 1) not in (1, None):
        raise ApiError(400, "the simulator generates one choice only (n=1)", "n")
    requested = body.get("max_completion_tokens") if chat else None
    if requested is None:
        requested = body.get("max_tokens")
    if requested is not None and (not isinstance(requested, int) or isinstance(requested, bool) or requested < 1):
        raise ApiError(400, "max_tokens must be a positive integer", "max_tokens")
    room = max_model_len - len(tokens)
    if room < 1 or (requested is not None and requested > room):
        raise ApiError(400, f"This model's maximum context length is {max_model_len} tokens. However, you "
                            f"requested {len(tokens) + (requested or 0)} tokens ({len(tokens)} in the messages, "
                            f"{requested or 0} in the completion). Please reduce the length of the messages or "
                            "completion.", "max_tokens")
    stream = bool(body.get("stream", False))
    options = body.get("stream_options") or {}
    include_usage = stream and isinstance(options, dict) and bool(options.get("include_usage", False))
    max_tokens = requested if requested is not None else min(default_max_tokens, room)
    return Generation(chat=chat, prompt_tokens=tokens, max_tokens=max_tokens, capped=requested is not None,
                      stream=stream, include_usage=include_usage)


def usage(seq: Sequence) -> dict[str, Any]:
    prompt = len(seq.prompt_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": seq.generated, "total_tokens": prompt + seq.generated,
            "prompt_tokens_details": {"cached_tokens": seq.cached_tokens}}


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def full_response(gen: Generation, seq: Sequence, model: str, extra: dict[str, Any] | None = None) -> bytes:
    text = filler_text(filler_start(seq.prompt_tokens), seq.generated)
    if gen.chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text,
                                                          "tool_calls": [], "reasoning_content": None},
                                  "logprobs": None, "finish_reason": seq.finish_reason, "stop_reason": None}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": seq.finish_reason,
                  "stop_reason": None}
        kind = "text_completion"
    return orjson.dumps({"id": new_id(gen.chat), "object": kind, "created": int(time.time()), "model": model,
                         "choices": [choice], "usage": usage(seq), **(extra or {})})


class ChunkWriter:
    """SSE chunks of one streamed answer; a token's chunk is three byte strings joined, nothing encoded per token."""

    def __init__(self, gen: Generation, seq: Sequence, model: str) -> None:
        self.gen, self.seq = gen, seq
        self.start = filler_start(seq.prompt_tokens)
        self.delivered = 0
        self.sending = False  # the stream's coroutine is inside an ASGI send: nobody else may write meanwhile
        rid, created = new_id(gen.chat), int(time.time())
        kind = "chat.completion.chunk" if gen.chat else "text_completion"
        self.envelope = orjson.dumps({"id": rid, "object": kind, "created": created, "model": model})[:-1]
        if gen.chat:
            self.head = b"data: " + self.envelope + b',"choices":[{"index":0,"delta":{"content":"'
            self.tail = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
            self.last_tail = b'"},"logprobs":null,"finish_reason":"%s"}]}\n\n'
        else:
            self.head = b"data: " + self.envelope + b',"choices":[{"index":0,"text":"'
            self.tail = b'","logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
            self.last_tail = b'","logprobs":null,"finish_reason":"%s","stop_reason":null}]}\n\n'

    def opening(self) -> bytes:
        if not self.gen.chat:
            return b""
        return (b"data: " + self.envelope
                + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
                  b'"finish_reason":null}]}\n\n')

    def pending(self) -> bytes:
        """The chunks of the tokens generated since the last call, then the closing chunks once finished."""
        seq, n = self.seq, len(FILLER_JSON)
        upto = seq.generated
        parts = []
        head, tail = self.head, self.tail
        for i in range(self.delivered, upto):
            last = seq.finished and i == upto - 1
            parts.append(head + FILLER_JSON[(self.start + i) % n]
                         + (self.last_tail % (seq.finish_reason or "stop").encode() if last else tail))
        self.delivered = upto
        if seq.finished:
            if self.gen.include_usage:
                parts.append(b"data: " + self.envelope + b',"choices":[],"usage":' + orjson.dumps(usage(seq))
                             + b"}\n\n")
            parts.append(DONE)
        return b"".join(parts)
