from __future__ import annotations

from modelyard.routing.contracts import Context
from modelyard.routing.plugins import prefix_affinity
from tests.replicas import replicas, request

SYSTEM = "You are a helpful assistant for the shipping team. " * 20


def make(**params: object) -> prefix_affinity.PrefixAffinityScorer:
    return prefix_affinity.create(prefix_affinity.Params.model_validate(params), Context("m"))


def test_the_replica_that_served_a_prefix_scores_its_share_of_the_prompt() -> None:
    scorer, endpoints = make(block_chars=64, cold_placement="load"), replicas(3)
    assert scorer.score(request(SYSTEM + "first question?"), endpoints) == [0.0, 0.0, 0.0]
    scorer.routed(request(SYSTEM + "first question?"), endpoints[1])
    scores = scorer.score(request(SYSTEM + "a second, different question, rather longer than the first one"),
                          endpoints)
    assert scores[0] == scores[2] == 0.0
    assert 0.8 < scores[1] < 1.0
    assert scorer.score(request(SYSTEM + "first question?"), endpoints)[1] == 1.0


def test_capacity_follows_the_engines_kv_cache_when_it_is_known() -> None:
    scorer = make(block_chars=64, chars_per_token=4.0)
    unknown, known = replicas(2, kv_blocks=[None, 100], kv_block_size=[None, 16])
    assert scorer.capacity(unknown) == prefix_affinity.DEFAULT_CAPACITY_BLOCKS
    assert scorer.capacity(known) == 100 * 16 * 4 // 64
    assert make(capacity_blocks=7).capacity(known) == 7


def test_index_stays_within_capacity() -> None:
    scorer, endpoints = make(block_chars=16, capacity_blocks=10), replicas(2)
    for n in range(100):
        scorer.routed(request(f"{n:04d}" * 40), endpoints[n % 2])
    assert len(scorer.index) == 20


def test_cold_prompts_go_where_every_gateway_process_would_send_them() -> None:
    endpoints = replicas(8)
    prompts = [f"System prompt of group {g}. " * 30 + "question" for g in range(20)]
    one = prefix_affinity.create(prefix_affinity.Params(), Context("m", processes=2))
    other = prefix_affinity.create(prefix_affinity.Params(), Context("m", processes=2))
    picks = []
    for prompt in prompts:
        scores = one.score(request(prompt), endpoints)
        assert sorted(scores)[-2:] == [0.0, 1.0]
        assert other.score(request(prompt), endpoints) == scores
        picks.append(scores.index(1.0))
    assert len(set(picks)) > 3  # spread over the replicas
    alone = prefix_affinity.create(prefix_affinity.Params(), Context("m", processes=1))
    assert alone.score(request(prompts[0]), endpoints) == [1.0] * 8  # least-used: all caches equally empty


def test_a_prompt_held_enough_somewhere_is_not_cold() -> None:
    scorer, endpoints = make(cold_placement="hash"), replicas(4)
    prompt = SYSTEM + "first question?"
    scorer.routed(request(prompt), endpoints[3])
    assert scorer.score(request(prompt), endpoints) == [0.0, 0.0, 0.0, 1.0]


def test_cold_placement_by_hash_skips_an_overloaded_replica() -> None:
    scorer, endpoints = make(cold_placement="hash"), replicas(4)
    prompt = request("A new system prompt nobody has seen yet. " * 30)
    first = scorer.score(prompt, endpoints).index(1.0)
    endpoints[first].running = 40  # far beyond the mean: the next replica in hash order gets it
    second = scorer.score(prompt, endpoints).index(1.0)
    assert second != first
    assert make(cold_placement="hash").score(prompt, endpoints).index(1.0) == second  # every process agrees


def test_cold_prompts_go_to_the_least_used_cache_when_one_process_routes() -> None:
    scorer, endpoints = make(block_chars=64), replicas(3)
    scorer.routed(request(SYSTEM + "q"), endpoints[0])
    scorer.routed(request("Another long system prompt for another team. " * 20), endpoints[1])
    scorer.routed(request("A third one, shorter. " * 10), endpoints[1])
    scores = scorer.score(request("Something nobody asked before, at some length. " * 20), endpoints)
    assert scores.index(1.0) == 2 and scores[1] == 0.0  # replica 2 holds nothing, replica 1 the most
    warm = scorer.score(request(SYSTEM + "another question"), endpoints)
    assert warm.index(max(warm)) == 0  # not cold: the match decides
