"""Precise prefix routing through `modelyard up`: simulator replicas that publish KV events, a router subscribed to
them by `up` itself. A prefix sent straight to one replica (the gateway never saw it) is found there through that
replica's events, by both gateway workers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

import httpx
import pytest

from tests.cluster import API_KEY, Cluster

REPLICAS = 3
TOPICS = ("billing", "shipping", "returns")


def system(topic: str) -> str:
    return f"You are the assistant of the {topic} desk. " + f"Always answer about {topic}, politely and briefly. " * 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    model = {"name": "sticky", "engine": "simulator", "profile": "tiny-cpu", "replicas": REPLICAS, "kv_events": True,
             "params": {"itl_base_s": 0.001, "prefill_overhead_s": 0.001, "prefill_s_per_token": 0.00001}}
    running = Cluster(tmp_path_factory.mktemp("precise"), [model], gateway={"workers": 2})
    running.start()
    yield running
    running.stop()


def replica_urls(cluster: Cluster) -> dict[str, str]:
    """Replica id -> its own URL, from the replicas' logs."""
    return {str(n): cluster.replica_url("sticky", n) for n in range(REPLICAS)}


def chat(topic: str, question: str) -> dict[str, Any]:
    return {"model": "sticky", "max_tokens": 2, "messages": [{"role": "system", "content": system(topic)},
                                                            {"role": "user", "content": question}]}


class Served(Protocol):
    @property
    def url(self) -> str: ...


def ask(gateway: Served, body: dict[str, Any]) -> tuple[str, int, int]:
    """A chat's replica, prompt tokens and cached prompt tokens (a Cluster's, or any gateway at `url`)."""
    reply = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30,
                       headers={"Authorization": f"Bearer {API_KEY}"})
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    return reply.headers["x-modelyard-replica"], usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]


def test_requests_sharing_a_prefix_land_where_the_events_say_it_is_held(cluster: Cluster) -> None:
    urls = replica_urls(cluster)
    for replica, topic in zip(sorted(urls), TOPICS, strict=True):  # each prefix warmed on one replica, directly
        warm = httpx.post(urls[replica] + "/v1/chat/completions", json=chat(topic, "warm up"), timeout=30)
        assert warm.status_code == 200, warm.text
    time.sleep(0.5)  # the events reach the workers' subscriptions within milliseconds
    for replica, topic in zip(sorted(urls), TOPICS, strict=True):
        answers = [ask(cluster, chat(topic, f"Question {n}: where is my order {n * 7}?")) for n in range(6)]
        assert {r for r, _, _ in answers} == {f"sticky/{replica}"}, (topic, answers)
        assert all(cached >= 0.8 * prompt for _, prompt, cached in answers)


def test_the_precise_scorer_is_timed(cluster: Cluster) -> None:
    ask(cluster, chat(TOPICS[0], "One more?"))
    assert cluster.metric("modelyard_routing_plugin_seconds_count", model="sticky", plugin="precise-prefix") >= 1
