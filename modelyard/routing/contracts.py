"""The routing contracts: a request as the plugins see it, and the three kinds of plugin.

A profile runs its filters (each narrows the candidates), then its scorers (each gives every candidate a score
in [0, 1]; the profile sums them with weights), then its picker (chooses one). A plugin that keeps state about
where requests went also implements `Stateful`; the pipeline tells it where each request was sent and when it
ended. Plugins never see HTTP; the relay never sees plugins.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from modelyard.local_tokenizer import LocalTokenizer
from modelyard.routing.endpoints import Endpoint

SESSION_HEADER = "x-session-id"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


def prompt_text(payload: Mapping[str, Any]) -> str:
    """The prompt as one string: chat messages in an approximate template (role, content), else `prompt`."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            if isinstance(message, dict):
                parts.append(f"<|{message.get('role', 'user')}|>\n{_content_text(message.get('content'))}\n")
        return "".join(parts)
    prompt = payload.get("prompt", payload.get("input"))
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return str(prompt[0])
    return ""


def block_hashes(text: str, block_chars: int, max_blocks: int) -> tuple[int, ...]:
    """The hash chain of the text's full blocks: block i's hash stands for the whole text up to its end."""
    count = min(len(text) // block_chars, max_blocks)
    out = []
    previous = 0
    for start in range(0, count * block_chars, block_chars):
        previous = hash((previous, text[start:start + block_chars]))
        out.append(previous)
    return tuple(out)


class RouteRequest:
    """One request to route: its model, its prompt text and prefix hashes (computed once, when first asked)."""

    __slots__ = ("model", "payload", "session", "role", "kv_keys", "prompt_tokens", "_text", "_hashes", "_hashes_key")

    def __init__(self, model: str, payload: Mapping[str, Any] | None = None, session: str | None = None,
                 role: str | None = None) -> None:
        self.model = model
        self.payload: Mapping[str, Any] = payload if payload is not None else {}
        self.session = session
        # a leg of a disaggregated model's request (spec/roles.py): only the replicas of this role are candidates
        self.role = role
        # the prompt's block keys as its engine computes them (token ids, vLLM's block chain), when a plugin's
        # `prepare` found them (routing/tokenize.py); None: not asked
        self.kv_keys: tuple[int, ...] | None = None
        self.prompt_tokens: int | None = None  # the prompt's exact token count, found with the keys
        self._text: str | None = None
        self._hashes: tuple[int, ...] = ()
        self._hashes_key: tuple[int, int] | None = None

    @classmethod
    def of(cls, model: str, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> RouteRequest:
        """Session id from the x-session-id header, else the OpenAI `user` field."""
        session = headers.get(SESSION_HEADER) if headers is not None else None
        if not session:
            user = payload.get("user")
            session = user if isinstance(user, str) and user else None
        return cls(model, payload, session)

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = prompt_text(self.payload)
        return self._text

    def prefix_hashes(self, block_chars: int, max_blocks: int) -> tuple[int, ...]:
        key = (block_chars, max_blocks)
        if self._hashes_key != key:
            self._hashes = block_hashes(self.text, block_chars, max_blocks)
            self._hashes_key = key
        return self._hashes


@dataclass
class Context:
    """What a plugin instance is built with: the model it routes for, a clock, a random source, and how many
    gateway processes route the same traffic, each with its own plugin state (so that state-keeping plugins can
    choose what the others would choose)."""

    model: str
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    processes: int = 1
    tokenizer: LocalTokenizer | None = None  # the model's own, loaded in the gateway (`tokenizer: local`)


class Filter(Protocol):
    def filter(self, request: RouteRequest, endpoints: list[Endpoint]) -> list[Endpoint]: ...


class Scorer(Protocol):
    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        """One score in [0, 1] per endpoint, in order; higher is better."""


class Picker(Protocol):
    def pick(self, request: RouteRequest, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> Endpoint:
        """One of the endpoints (never called with none)."""


@runtime_checkable
class Preparing(Protocol):
    """A plugin that needs I/O before the decision (the engine's tokenizer, its event feeds): the router awaits
    `prepare` once per request, before `pick`, with the model's replicas."""

    async def prepare(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Stateful(Protocol):
    """A plugin that learns from where requests went (prefix index, sessions, round-robin position)."""

    def routed(self, request: RouteRequest, endpoint: Endpoint) -> None: ...

    def finished(self, request: RouteRequest, endpoint: Endpoint) -> None: ...


class PluginParams(BaseModel):
    """A plugin's parameters: typed, with defaults, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
