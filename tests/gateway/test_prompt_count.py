"""gateway/prompt_count.py: the exact prompt count a key with token limits reserves, each way it comes, with a
simulator replica on loopback; the precise router's tokens are reused, not asked for twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelyard.engines import get_engine
from modelyard.fleet.process import free_port
from modelyard.gateway.prompt_count import PromptCounts, counts_tokens
from modelyard.kv_hash import BlockHasher
from modelyard.local_tokenizer import LocalTokenizer, TokenizerError, load_tokenizers
from modelyard.routing.contracts import RouteRequest
from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState
from modelyard.routing.pipeline import Router
from modelyard.routing.plugins.precise_prefix import PrecisePrefixScorer
from modelyard.simulator.kv_events import KVEventsConfig
from modelyard.simulator.profiles import resolve_profile
from modelyard.simulator.run import SimulatorThread
from modelyard.spec import parse_spec
from modelyard.store.base import KeyRecord
from tests.tokenizer_dir import make_tokenizer_dir

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Where are the bolts? " * 20}]}
PROFILE = resolve_profile("tiny-cpu", {"prefill_s_per_token": 0, "itl_base_s": 0.001})


def test_only_keys_with_token_limits_are_counted() -> None:
    assert not counts_tokens(KeyRecord("a", "h", rpm=10, max_concurrency=2))
    assert counts_tokens(KeyRecord("a", "h", tpm=100)) and counts_tokens(KeyRecord("a", "h", budget_tokens=5))


def table_of(sim: SimulatorThread, events: str | None = None) -> EndpointTable:
    table = EndpointTable()
    table.add(Endpoint(model="m", replica=0, url=sim.url, state=ReplicaState.READY, kv_events=events,
                       tokenize_path="/tokenize"))
    return table


def test_the_precise_routers_count_is_reused_and_not_asked_for_again() -> None:
    """A completion prompt: the router tokenizes it whole (a chat of a known system head it keys by the head alone,
    with no count: gateway/prompt_count.py then asks the engine, as for the other profiles)."""
    spec = parse_spec("models:\n  - name: m\n    engine: simulator\n    kv_events: true\n")
    config = KVEventsConfig(f"tcp://127.0.0.1:{free_port()}", None)
    prompt = {"model": "m", "prompt": "Count the tokens of this prompt, which no chat template wraps. " * 4}
    with SimulatorThread(PROFILE, "m", kv_events=config) as sim:
        table = table_of(sim, config.endpoint)
        router, counts, route = Router(spec, table), PromptCounts(), RouteRequest("m", prompt)
        model = spec.models[0]

        async def run() -> int | None:
            try:
                counted = await counts.count(route, model, router, get_engine("simulator"), table)
                await router.prepare(route)  # the relay's, after the admission
                return counted
            finally:
                await router.close()

        counted = asyncio.run(run())
        scorer = next(p for p in router.pipelines["m"].preparing if isinstance(p, PrecisePrefixScorer))
        assert counted == route.prompt_tokens == len(sim.app._prompt(dict(prompt))[0]) and route.kv_keys
        assert scorer.tokens.round_trips == 1  # once, for the keys and the count together


def test_the_local_tokenizer_then_the_engines_tokenize(tmp_path: Path) -> None:
    directory = make_tokenizer_dir(tmp_path / "t")
    local = parse_spec(f"models:\n  - name: m\n    engine: simulator\n    tokenizer: local\n"
                       f"    tokenizer_path: {directory}\n")
    plain = parse_spec("models:\n  - name: m\n    engine: simulator\n")
    with SimulatorThread(PROFILE, "m") as sim:
        table = table_of(sim)
        tokenizers = load_tokenizers(local)
        counts = PromptCounts()
        route = RouteRequest("m", CHAT)
        exact = asyncio.run(counts.count(route, local.models[0], Router(local, table, tokenizers=tokenizers),
                                         get_engine("simulator"), table))
        assert exact == len(LocalTokenizer(directory).chat_ids(CHAT))
        counts = PromptCounts()  # a model's counts come one way (`reconfigure` starts anew when that changes)
        by_engine = asyncio.run(counts.count(RouteRequest("m", CHAT), plain.models[0], Router(plain, table),
                                             get_engine("simulator"), table))
        assert by_engine == len(sim.app._prompt(dict(CHAT))[0]) != exact
        table.of("m")[0].state = ReplicaState.STOPPED  # no ready replica: no count (the estimate then)
        assert asyncio.run(counts.count(RouteRequest("m", {**CHAT, "n": 2}), plain.models[0], Router(plain, table),
                                        get_engine("simulator"), table)) is None


def test_a_missing_tokenizer_names_the_model_and_the_file(tmp_path: Path) -> None:
    spec = parse_spec(f"models:\n  - name: m\n    engine: simulator\n    tokenizer: local\n"
                      f"    tokenizer_path: {tmp_path}\n")
    with pytest.raises(TokenizerError, match=f"model 'm': tokenizer: {tmp_path}/tokenizer.json: no such file"):
        load_tokenizers(spec)


def test_with_a_local_tokenizer_the_precise_router_asks_the_engine_nothing(tmp_path: Path) -> None:
    directory = make_tokenizer_dir(tmp_path / "t")
    spec = parse_spec(f"models:\n  - name: m\n    engine: simulator\n    kv_events: true\n    tokenizer: local\n"
                      f"    tokenizer_path: {directory}\n")
    config = KVEventsConfig(f"tcp://127.0.0.1:{free_port()}", None)
    local = LocalTokenizer(directory)
    with SimulatorThread(PROFILE, "m", kv_events=config, tokenizer=local) as sim:
        table = table_of(sim, config.endpoint)
        router, route = Router(spec, table, tokenizers=load_tokenizers(spec)), RouteRequest("m", CHAT)

        async def run() -> int | None:
            try:
                return await PromptCounts().count(route, spec.models[0], router, get_engine("simulator"), table)
            finally:
                await router.close()

        ids = local.chat_ids(CHAT)
        assert asyncio.run(run()) == len(ids) == len(sim.app._prompt(dict(CHAT))[0])
        scorer = next(p for p in router.pipelines["m"].preparing if isinstance(p, PrecisePrefixScorer))
        assert route.kv_keys == BlockHasher("0").keys(ids, PROFILE.block_size) and scorer.tokens.round_trips == 0
