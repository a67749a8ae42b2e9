"""Routing through `modelyard up` with real simulator replicas: the default profile keeps requests that share a
long prefix on the replica that holds it in its KV cache; round-robin, on an identical model, does not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.cluster import API_KEY, Cluster

REPLICAS = 3
SYSTEMS = [f"You are assistant number {n} of the {topic} desk. " + f"Always answer about {topic}, politely. " * 40
           for n, topic in enumerate(("billing", "shipping"))]


def sim(name: str, routing: str) -> dict[str, Any]:
    return {"name": name, "engine": "simulator", "profile": "tiny-cpu", "replicas": REPLICAS, "routing": routing,
            "params": {"itl_base_s": 0.001, "prefill_overhead_s": 0.001, "prefill_s_per_token": 0.00001}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # one gateway process: its prefix index and decision timings are per process
    running = Cluster(tmp_path_factory.mktemp("routing"), [sim("sticky", "default"), sim("spread", "round-robin")],
                      gateway={"workers": 1})
    running.start()
    yield running
    running.stop()


def ask(cluster: Cluster, model: str, system: str, question: str, **extra: Any) -> tuple[str, int, int]:
    """The replica that answered, the prompt's tokens and how many of them its KV cache already held."""
    body = {"model": model, "max_tokens": 2, "messages": [{"role": "system", "content": system},
                                                          {"role": "user", "content": question}], **extra}
    reply = httpx.post(cluster.url + "/v1/chat/completions", json=body, timeout=30,
                       headers={"Authorization": f"Bearer {API_KEY}"})
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    return reply.headers["x-modelyard-replica"], usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]


def test_requests_sharing_a_prefix_land_on_the_replica_that_caches_it(cluster: Cluster) -> None:
    for system in SYSTEMS:
        answers = [ask(cluster, "sticky", system, f"Question {n}: where is my order {n * 7}?") for n in range(6)]
        assert len({replica for replica, _, _ in answers}) == 1, answers
        for _, prompt, cached in answers[1:]:
            assert cached >= 0.8 * prompt  # the shared system prompt was in that replica's cache


def test_round_robin_spreads_them_and_misses_the_cache(cluster: Cluster) -> None:
    answers = [ask(cluster, "spread", SYSTEMS[0], f"Question {n}: where is my order?") for n in range(6)]
    assert len({replica for replica, _, _ in answers}) == REPLICAS
    first_visits = answers[:REPLICAS]
    assert all(cached < 0.5 * prompt for _, prompt, cached in first_visits)


def test_the_routing_decisions_are_timed_per_plugin(cluster: Cluster) -> None:
    ask(cluster, "sticky", SYSTEMS[0], "One more?")
    assert cluster.metric("modelyard_routing_decision_seconds_count", model="sticky") >= 1
    assert cluster.metric("modelyard_routing_plugin_seconds_count", model="sticky", plugin="prefix-affinity") >= 1
