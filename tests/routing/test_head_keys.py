from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from modelyard.routing.head_keys import HeadKeys, head_payload
from modelyard.routing.tokenize import EngineTokens
from modelyard.simulator.profiles import resolve_profile
from modelyard.simulator.run import SimulatorThread

SYSTEM = "You answer questions about the warehouse inventory, briefly and precisely. " * 12


def chat(question: str, system: str = SYSTEM) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}


def test_a_known_system_prompt_needs_no_round_trip_and_its_keys_lead_the_engines() -> None:
    profile = resolve_profile("tiny-cpu", {"prefill_s_per_token": 0, "itl_base_s": 0.001})
    tokens = EngineTokens()
    heads = HeadKeys(tokens)
    with SimulatorThread(profile, "sim") as sim:
        first = asyncio.run(heads.keys(chat("Where are the bolts?"), "sim", sim.url, "/tokenize", 16, "0"))
        assert tokens.round_trips == 2  # the whole prompt and, once, its head
        second = asyncio.run(heads.keys(chat("And the nuts, where?"), "sim", sim.url, "/tokenize", 16, "0"))
        assert tokens.round_trips == 2
        whole = asyncio.run(tokens.keys(chat("And the nuts, where?"), "sim", sim.url, "/tokenize", 16, "0"))
        assert len(second) >= 8 and whole[:len(second)] == second and first[:len(second)] == second
        other = asyncio.run(heads.keys(chat("Hi", system="Another prompt. " * 40), "sim", sim.url, "/tokenize",
                                       16, "0"))
        assert tokens.round_trips == 5 and other[:4] != second[:4]


class Scripted(EngineTokens):
    """What a template that moves the system prompt into the last user turn gives: the head is no prefix."""

    async def prompt(self, payload: Mapping[str, Any], model: str, base_url: str, path: str, block_size: int,
                     seed: str, local: object = None, template: str | None = None) -> tuple[tuple[int, ...], int]:
        self.round_trips += 1
        messages = payload["messages"]
        keys = (1, 2, 3) if len(messages) == 1 else (9, len(str(messages[-1])), 1, 2, 3)
        return keys, 16 * len(keys)


def test_a_head_that_is_not_a_prefix_of_its_prompts_is_refused_and_they_are_tokenized_whole() -> None:
    tokens = Scripted()
    heads = HeadKeys(tokens)
    for question, trips in (("one", 2), ("two", 3), ("three", 4)):
        keys = asyncio.run(heads.keys(chat(question), "m", "http://127.0.0.1:1", "/tokenize", 16, "0"))
        assert keys[0] == 9 and tokens.round_trips == trips


def test_the_head_is_the_leading_system_messages_without_a_generation_prompt() -> None:
    payload = {"messages": [{"role": "system", "content": "a"}, {"role": "developer", "content": "b"},
                            {"role": "user", "content": "c"}, {"role": "system", "content": "d"}],
               "chat_template_kwargs": {"x": 1}, "add_generation_prompt": True}
    assert head_payload(payload) == {"messages": payload["messages"][:2], "add_generation_prompt": False,
                                     "chat_template_kwargs": {"x": 1}}
    assert head_payload({"messages": [{"role": "system", "content": "a"}]}) is None  # nothing after it
    assert head_payload({"messages": [{"role": "user", "content": "a"}]}) is None
    assert head_payload({"prompt": "a"}) is None
