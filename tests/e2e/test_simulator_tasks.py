"""Embedding and rerank models on the simulator, launched by `modelyard up`, through the gateway: the mixed
clusters that the autoscaling and pool work simulates."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.cluster import API_KEY, Cluster

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    params = {"itl_base_s": 0.001, "prefill_s_per_token": 0.00001}
    models = [{"name": "sim-embed", "engine": "simulator", "task": "embedding", "params": params, "replicas": 2,
               "routing": "round-robin"},  # each replica in turn: the test below sees both in two requests
              {"name": "sim-rerank", "engine": "simulator", "task": "rerank", "params": params}]
    running = Cluster(tmp_path_factory.mktemp("sim-tasks"), models, gateway={"workers": 1}).start(timeout_s=60)
    yield running
    running.stop()


def test_embeddings_are_the_same_on_every_replica(cluster: Cluster) -> None:
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key=API_KEY, max_retries=0)
    seen: dict[str, list[float]] = {}
    for _ in range(2):
        reply = client.embeddings.with_raw_response.create(model="sim-embed", input="the same text")
        seen[reply.headers["x-modelyard-replica"]] = reply.parse().data[0].embedding
    assert set(seen) == {"sim-embed/0", "sim-embed/1"}
    assert seen["sim-embed/0"] == seen["sim-embed/1"]


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_puts_the_relevant_document_first(cluster: Cluster, path: str) -> None:
    documents = ["Bananas are yellow.", "Paris is the capital of France.", "The tide comes in twice a day."]
    body = {"model": "sim-rerank", "query": "What is the capital of France?", "documents": documents, "top_n": 2}
    reply = httpx.post(cluster.url + path, json=body, headers=HEADERS, timeout=30)
    assert reply.status_code == 200
    results = reply.json()["results"]
    assert len(results) == 2 and results[0]["index"] == 1
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert results[0]["document"]["text"] == documents[1]


def test_a_rerank_model_is_not_an_embedding_model(cluster: Cluster) -> None:
    reply = httpx.post(cluster.url + "/v1/embeddings", json={"model": "sim-rerank", "input": "x"}, headers=HEADERS)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "model_does_not_support_endpoint"
