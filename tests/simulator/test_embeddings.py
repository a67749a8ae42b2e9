from __future__ import annotations

import base64
import os
import subprocess
import sys
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.simulator.api import ApiError
from modelyard.simulator.embeddings import Embedder, encode, parse_embedding, truncated
from modelyard.simulator.run import SimulatorThread
from modelyard.simulator.tokens import tokenize
from tests.simulator.conftest import StartSimulator, client_for

PARAPHRASES = ("How do I reset my password?", "How can I reset the password?")
UNRELATED = "Quarterly revenue in Brazil grew by ten percent."


@pytest.fixture
def embedder() -> Embedder:
    return Embedder(384)


@pytest.fixture
def esim(start_simulator: StartSimulator) -> SimulatorThread:
    return start_simulator(task="embedding")


def test_vectors_are_unit_and_deterministic(embedder: Embedder) -> None:
    tokens = tokenize(PARAPHRASES[0])
    first = embedder.embed(tokens)
    assert first.shape == (384,)
    assert np.isclose(np.linalg.norm(first), 1.0)
    assert np.array_equal(first, Embedder(384).embed(tokens))  # another instance, the same vector
    assert not np.array_equal(first, embedder.embed(tokenize(PARAPHRASES[1])))


def test_texts_sharing_words_are_closer_than_unrelated_ones(embedder: Embedder) -> None:
    a, b, c = (embedder.embed(tokenize(t)) for t in (*PARAPHRASES, UNRELATED))
    assert float(a @ b) > 0.5
    assert float(a @ b) > float(a @ c) + 0.3 and float(a @ b) > float(b @ c) + 0.3


def test_vectors_do_not_depend_on_the_process() -> None:
    """No per-process seed: another interpreter, with another hash seed, gives the same bytes."""
    code = ("import base64; from modelyard.simulator.embeddings import Embedder; "
            "from modelyard.simulator.tokens import tokenize; "
            f"print(base64.b64encode(Embedder(64).embed(tokenize({UNRELATED!r})).tobytes()).decode())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert base64.b64decode(out) == Embedder(64).embed(tokenize(UNRELATED)).tobytes()


def test_a_narrower_model_is_the_head_of_a_wider_one(embedder: Embedder) -> None:
    tokens = tokenize(UNRELATED)
    short = truncated(embedder.embed(tokens), 64)
    assert np.isclose(np.linalg.norm(short), 1.0)
    assert np.allclose(short, Embedder(64).embed(tokens))
    assert truncated(short, None) is short


def test_base64_is_little_endian_float32(embedder: Embedder) -> None:
    vector = embedder.embed(tokenize("hello"))
    encoded = encode(vector, "base64")
    assert isinstance(encoded, str)
    assert np.array_equal(np.frombuffer(base64.b64decode(encoded), dtype="<f4"), vector.astype(np.float32))


@pytest.mark.parametrize(("body", "count"), [
    ({"input": "one text"}, 1), ({"input": ["a", "b c"]}, 2), ({"input": [5, 6, 7]}, 1),
    ({"input": [[5, 6], [7]]}, 2), ({"messages": [{"role": "user", "content": "Hi"}]}, 1),
])
def test_parse_takes_every_input_form(body: dict[str, Any], count: int) -> None:
    request = parse_embedding(body, 100, 384, "m")
    assert len(request.inputs) == count and all(request.inputs)
    assert request.encoding_format == "float" and request.dimensions is None


@pytest.mark.parametrize("body", [
    {}, {"input": None}, {"input": 5}, {"input": []}, {"input": ""}, {"input": [[]]}, {"input": [True]},
    {"input": [1, "a"]}, {"input": [{"text": "a"}]}, {"input": [-1]}, {"input": [[10**9]]},
    {"input": "x", "encoding_format": "int8"}, {"input": "x", "dimensions": 0}, {"input": "x", "dimensions": 385},
    {"input": "x", "dimensions": "8"}, {"input": "x", "dimensions": True}, {"input": "x " * 101},
    {"messages": "hi"}, {"messages": [5]},
])
def test_parse_refuses_bad_requests(body: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as failure:
        parse_embedding(body, 100, 384, "m")
    assert failure.value.status == 400


def test_embeddings_through_the_openai_sdk(esim: SimulatorThread) -> None:
    client = client_for(esim)
    reply = client.embeddings.create(model="sim", input=[*PARAPHRASES, UNRELATED])  # the SDK asks for base64
    assert [d.index for d in reply.data] == [0, 1, 2] and reply.model == "sim"
    assert all(len(d.embedding) == 384 for d in reply.data)
    expected = sum(len(tokenize(t)) for t in (*PARAPHRASES, UNRELATED))
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == expected
    floats = client.embeddings.create(model="sim", input=PARAPHRASES[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, reply.data[0].embedding)


def test_float_and_base64_answers_agree(esim: SimulatorThread) -> None:
    def post(**extra: object) -> dict[str, Any]:
        resp = httpx.post(esim.url + "/v1/embeddings", json={"model": "sim", "input": ["hi there"], **extra})
        assert resp.status_code == 200
        answer: dict[str, Any] = resp.json()
        return answer

    floats = post()
    assert floats["object"] == "list" and floats["data"][0]["object"] == "embedding"
    encoded = post(encoding_format="base64")["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert np.array_equal(decoded, np.asarray(floats["data"][0]["embedding"], dtype=np.float32))


def test_text_and_its_token_ids_give_the_same_vector(esim: SimulatorThread) -> None:
    client = client_for(esim)
    by_text = client.embeddings.create(model="sim", input=UNRELATED, encoding_format="float").data[0].embedding
    by_ids = client.embeddings.create(model="sim", input=tokenize(UNRELATED), encoding_format="float")
    assert by_ids.data[0].embedding == by_text


def test_dimensions_truncate_and_renormalise(esim: SimulatorThread) -> None:
    client = client_for(esim)
    full = client.embeddings.create(model="sim", input="hello", encoding_format="float").data[0].embedding
    short = client.embeddings.create(model="sim", input="hello", encoding_format="float", dimensions=32)
    vector = np.asarray(short.data[0].embedding)
    assert len(vector) == 32 and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-6)
    head = np.asarray(full[:32])
    assert np.allclose(vector, head / np.linalg.norm(head), atol=1e-6)


def test_equal_texts_give_equal_vectors_in_every_replica(start_simulator: StartSimulator) -> None:
    one, two = start_simulator(task="embedding", seed=1), start_simulator(task="embedding", seed=2)
    body = {"model": "sim", "input": [*PARAPHRASES, UNRELATED]}
    first = httpx.post(one.url + "/v1/embeddings", json=body).json()["data"]
    second = httpx.post(two.url + "/v1/embeddings", json=body).json()["data"]
    assert [d["embedding"] for d in first] == [d["embedding"] for d in second]


def test_the_profile_sets_the_dimension(start_simulator: StartSimulator) -> None:
    sim = start_simulator(task="embedding", embedding_dim=16)
    reply = client_for(sim).embeddings.create(model="sim", input="x", encoding_format="float")
    assert len(reply.data[0].embedding) == 16
    resp = httpx.post(sim.url + "/v1/embeddings", json={"input": "x", "dimensions": 17})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "dimensions"


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b'{"input": []}', b'{"input": 3}', b'{"input": [[1], [true]]}', b'{"input": [""]}',
    b'{"input": "x", "encoding_format": 5}', b'{"input": "x", "dimensions": 1000}',
    b'{"input": "' + b"x " * 5000 + b'"}',
])
def test_bad_requests_are_400s_never_500s(esim: SimulatorThread, body: bytes) -> None:
    resp = httpx.post(esim.url + "/v1/embeddings", content=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "BadRequestError"


def test_unknown_model_and_too_little_kv_cache(start_simulator: StartSimulator) -> None:
    sim = start_simulator(task="embedding", kv_blocks=2)
    assert httpx.post(sim.url + "/v1/embeddings", json={"model": "other", "input": "x"}).status_code == 404
    resp = httpx.post(sim.url + "/v1/embeddings", json={"input": " ".join(["x"] * 40)})
    assert resp.status_code == 400 and "KV cache" in resp.json()["error"]["message"]
