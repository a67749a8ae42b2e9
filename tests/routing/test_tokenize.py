from __future__ import annotations

import asyncio
from typing import Any

from modelyard.kv_hash import BlockHasher
from modelyard.routing.tokenize import EngineTokens, tokenize_body
from modelyard.simulator.kvcache import PrefixCache
from modelyard.simulator.profiles import resolve_profile
from modelyard.simulator.run import SimulatorThread

SYSTEM = "You answer questions about the warehouse inventory, briefly and precisely. " * 6
CHAT = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where are the bolts?"}]}
COMPLETION = {"prompt": SYSTEM + "Q: where are the bolts? A:"}


def engine_keys(sim: SimulatorThread, payload: dict[str, Any], chat: bool) -> list[int]:
    """The keys the simulator's own cache stores for the request (what its BlockStored events carry)."""
    cache = sim.app.scheduler.cache
    before = set(cache._refs)
    import httpx

    path = "/v1/chat/completions" if chat else "/v1/completions"
    assert httpx.post(sim.url + path, json={**payload, "max_tokens": 1}, timeout=10).status_code == 200
    assert isinstance(cache, PrefixCache)
    return [k for k in cache._refs if k not in before]


def test_block_keys_equal_the_engines_for_chat_and_completion_prompts() -> None:
    profile = resolve_profile("tiny-cpu", {"prefill_s_per_token": 0, "itl_base_s": 0.001, "hash_seed": "42"})
    tokens = EngineTokens()
    with SimulatorThread(profile, "sim") as sim:
        for payload, chat in ((CHAT, True), (COMPLETION, False)):
            keys = asyncio.run(tokens.keys(payload, "sim", sim.url, "/tokenize", 16, "42"))
            assert len(keys) > 4
            assert list(keys) == engine_keys(sim, payload, chat)
        assert tokens.round_trips == 2
        again = asyncio.run(tokens.keys(CHAT, "sim", sim.url, "/tokenize", 16, "42"))
        assert tokens.round_trips == 2 and len(again) > 4  # cached per prompt
    assert tokenize_body({"prompt": [1, 2, 3]}, "m") == [1, 2, 3]  # token ids need no round trip
    assert asyncio.run(tokens.keys({"prompt": list(range(40))}, "m", "http://127.0.0.1:1", "/tokenize", 16, "0")) \
        == BlockHasher("0").keys(list(range(40)), 16)


def test_a_tokenize_failure_is_an_error_not_keys() -> None:
    import pytest

    from modelyard.fleet.process import free_port
    from modelyard.routing.tokenize import TokenizeError

    with pytest.raises(TokenizeError):
        asyncio.run(EngineTokens().keys(COMPLETION, "m", f"http://127.0.0.1:{free_port()}", "/tokenize", 16, "0"))
