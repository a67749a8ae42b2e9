from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any

import orjson

VOCAB_SIZE = 128_000
SPECIAL_TOKENS = 256
PIECE = re.compile(r"\s?\w+|\s?[^\w\s]|\s+")

# the filler text that the simulator "generates", one word a token
FILLER_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "simulated", "tokens",
    "flow", "from", "an", "engine", "that", "runs", "on", "CPUs", "and", "answers", "like", "vLLM", "would",
    "with", "steady", "timing", "for", "routing", "tests", "only",
)
FILLER_PIECES = tuple(" " + word for word in FILLER_WORDS)
# each piece as it sits inside a JSON string, encoded once
FILLER_JSON = tuple(orjson.dumps(piece)[1:-1] for piece in FILLER_PIECES)


def tokenize(text: str) -> list[int]:
    """Deterministic word-piece tokens: a word with its leading space, a punctuation mark or a run of spaces."""
    span = VOCAB_SIZE - SPECIAL_TOKENS
    return [SPECIAL_TOKENS + zlib.crc32(piece.encode()) % span for piece in PIECE.findall(text)]


def token_strs(text: str) -> list[str]:
    return PIECE.findall(text)


def content_text(content: Any) -> str:
    """The text of a chat message's content: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return " ".join(str(p) for p in parts)
    return str(content)


def render_chat(messages: Sequence[Any], add_generation_prompt: bool = True) -> str:
    """A Llama-3-like chat template, so that a conversation's shared head is a shared token prefix."""
    out = ["<|begin_of_text|>"]
    for message in messages:
        if not isinstance(message, dict):
            raise ValueError("each message must be an object")
        role = str(message.get("role", "user"))
        out.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{content_text(message.get('content'))}<|eot_id|>")
    if add_generation_prompt:
        out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(out)


def filler_start(prompt_tokens: Sequence[int]) -> int:
    """Where in the filler words a reply starts: fixed by the prompt, so a reply is reproducible."""
    return sum(prompt_tokens[-4:]) % len(FILLER_WORDS) if prompt_tokens else 0


def filler_text(start: int, count: int) -> str:
    n = len(FILLER_PIECES)
    return "".join(FILLER_PIECES[(start + i) % n] for i in range(count))
