"""A chat's block keys from its system head alone, tokenized once per head: the precise-prefix scorer's way to route
a new prompt of a known system prompt without a `/tokenize` round trip.

The head is the chat's leading system (or developer) messages, rendered without a generation prompt, with the
request's template options. The first request of a head is tokenized whole (one round trip, as before) and so is
its head (a second one, once); the head's keys are then kept when they are a prefix of the whole prompt's keys
(the template renders the system part on its own, as Llama's, Qwen's and the simulator's do) and refused for good
when not (a template that moves the system prompt into a later turn): such a head's requests are tokenized whole,
each. A request of a known head costs a BLAKE2 digest of its head; its keys stop at the head's last full block, so
what routes it is the system prompt (a conversation's own earlier turns are not in them).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import orjson

from modelyard.routing.tokenize import CHAT_OPTIONS, EngineTokens

HEAD_ROLES = ("system", "developer")


def head_payload(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """The chat's leading system messages as a request of their own; None when there are none, or only those."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return None
    count = 0
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in HEAD_ROLES:
            break
        count += 1
    if count == 0 or count == len(messages):
        return None
    head: dict[str, Any] = {k: payload[k] for k in CHAT_OPTIONS if k in payload}
    head.update(messages=messages[:count], add_generation_prompt=False)
    head.pop("continue_final_message", None)
    return head


def _chars(messages: list[Any]) -> int:
    return sum(len(str(m.get("content") or "")) for m in messages if isinstance(m, dict))


def tail_blocks(payload: Mapping[str, Any], head_blocks: int) -> int:
    """About how many blocks a chat has past its system head, at the head's own characters per block (0 when it
    has no head)."""
    head = head_payload(payload)
    if head is None or head_blocks <= 0:
        return 0
    count = len(head["messages"])
    head_chars = _chars(head["messages"])
    return (_chars(payload["messages"][count:]) * head_blocks) // max(1, head_chars)


class HeadKeys:
    """Keys per head digest: a tuple of keys (a prefix of its prompts' keys), or None (it is not: tokenize whole)."""

    def __init__(self, tokens: EngineTokens, cache_size: int = 1024) -> None:
        self.tokens, self.cache_size = tokens, cache_size
        self._heads: OrderedDict[bytes, tuple[int, ...] | None] = OrderedDict()

    async def keys(self, payload: Mapping[str, Any], model: str, base_url: str, path: str, block_size: int,
                   seed: str) -> tuple[int, ...]:
        return (await self.prompt(payload, model, base_url, path, block_size, seed))[0]

    async def prompt(self, payload: Mapping[str, Any], model: str, base_url: str, path: str, block_size: int,
                     seed: str) -> tuple[tuple[int, ...], int | None]:
        """(block keys, token count): the count where the prompt was tokenized whole, None for a known head."""
        head = head_payload(payload)
        if head is None:
            return await self.tokens.prompt(payload, model, base_url, path, block_size, seed)
        digest = hashlib.blake2b(orjson.dumps(head), digest_size=16,
                                 key=b"%d/%b/%b" % (block_size, seed.encode(), model.encode())).digest()
        if digest in self._heads:
            known = self._heads[digest]
            self._heads.move_to_end(digest)
            if known is not None:
                return known, None
            return await self.tokens.prompt(payload, model, base_url, path, block_size, seed)
        whole = await self.tokens.prompt(payload, model, base_url, path, block_size, seed)
        mine = await self.tokens.keys(head, model, base_url, path, block_size, seed)
        self._heads[digest] = mine if mine and whole[0][:len(mine)] == mine else None
        if len(self._heads) > self.cache_size:
            self._heads.popitem(last=False)
        return whole
