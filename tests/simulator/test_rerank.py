from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from modelyard.simulator.api import ApiError
from modelyard.simulator.rerank import parse_rerank, relevance, rerank_inputs, rerank_response
from modelyard.simulator.run import SimulatorThread
from modelyard.simulator.tokens import tokenize
from tests.simulator.conftest import StartSimulator

QUERY = "how to reset a forgotten password"
DOCUMENTS = ["The weather in Paris is sunny.", "Reset a forgotten password from the login page.",
             "Password rules: eight characters at least."]


@pytest.fixture
def rsim(start_simulator: StartSimulator) -> SimulatorThread:
    return start_simulator(task="rerank")


def test_relevance_is_word_overlap_within_0_and_1() -> None:
    assert relevance("reset password", "Reset your PASSWORD, please") > relevance("reset password", "a password")
    assert relevance("reset password", "nothing in common") == 0.0
    assert relevance("reset password", "password reset") == 1.0
    assert relevance("", "x") == 0.0 and relevance("x", "") == 0.0
    assert all(0.0 <= relevance(QUERY, d) <= 1.0 for d in DOCUMENTS)


def test_parse_defaults_and_document_objects() -> None:
    request = parse_rerank({"query": "q", "documents": ["a", {"text": "b"}]})
    assert request.documents == ["a", "b"] and request.top_n == 2 and request.return_documents
    assert parse_rerank({"query": "q", "documents": ["a", "b"], "top_n": 1}).top_n == 1
    assert parse_rerank({"query": "q", "documents": ["a", "b"], "top_n": 0}).top_n == 2  # vLLM: 0 means all
    assert parse_rerank({"query": "q", "documents": ["a"], "top_n": 9}).top_n == 1


@pytest.mark.parametrize("body", [
    {}, {"query": 5, "documents": ["a"]}, {"query": "", "documents": ["a"]}, {"query": "q"},
    {"query": "q", "documents": []}, {"query": "q", "documents": "a"}, {"query": "q", "documents": [5]},
    {"query": "q", "documents": [{"txt": "a"}]}, {"query": "q", "documents": ["a"], "top_n": "1"},
    {"query": "q", "documents": ["a"], "top_n": True}, {"query": "q", "documents": ["a"], "return_documents": 1},
])
def test_parse_refuses_bad_requests(body: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as failure:
        parse_rerank(body)
    assert failure.value.status == 400


def test_inputs_of_a_cross_encoder_and_of_an_embedding_model() -> None:
    request = parse_rerank({"query": "a b", "documents": ["c", "d e"]})
    assert rerank_inputs(request, True, 100) == [tokenize("a b") + tokenize("c"), tokenize("a b") + tokenize("d e")]
    assert rerank_inputs(request, False, 100) == [tokenize("a b"), tokenize("c"), tokenize("d e")]
    with pytest.raises(ApiError, match="maximum context length"):
        rerank_inputs(request, True, 3)


def test_response_is_sorted_and_cut_to_top_n() -> None:
    request = parse_rerank({"query": QUERY, "documents": DOCUMENTS, "top_n": 2, "return_documents": False})
    answer = orjson.loads(rerank_response("m", request, 12))
    assert [r["index"] for r in answer["results"]] == [1, 2]
    assert all("document" not in r for r in answer["results"])
    assert answer["usage"] == {"prompt_tokens": 12, "total_tokens": 12} and answer["id"].startswith("rerank-")


def test_rerank_in_vllm_shape(rsim: SimulatorThread) -> None:
    resp = httpx.post(rsim.url + "/rerank", json={"model": "sim", "query": QUERY, "documents": DOCUMENTS})
    assert resp.status_code == 200
    answer = resp.json()
    assert answer["model"] == "sim" and set(answer) == {"id", "model", "usage", "results"}
    results = answer["results"]
    assert [r["index"] for r in results] == [1, 2, 0]
    assert results[0]["document"] == {"text": DOCUMENTS[1]}
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    pairs = sum(len(tokenize(QUERY)) + len(tokenize(d)) for d in DOCUMENTS)  # a cross-encoder reads each pair
    assert answer["usage"]["total_tokens"] == pairs


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_aliases_and_top_n(rsim: SimulatorThread, path: str) -> None:
    body = {"query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "top_n": 1}
    results = httpx.post(rsim.url + path, json=body).json()["results"]
    assert len(results) == 1 and results[0]["index"] == 1


def test_an_embedding_model_reranks_too(start_simulator: StartSimulator) -> None:
    sim = start_simulator(task="embedding")
    answer = httpx.post(sim.url + "/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()
    assert answer["results"][0]["index"] == 1
    alone = len(tokenize(QUERY)) + sum(len(tokenize(d)) for d in DOCUMENTS)  # the query is embedded once
    assert answer["usage"]["total_tokens"] == alone


@pytest.mark.parametrize("body", [
    b"{not json", b'"text"', b"{}", b'{"query": "q", "documents": []}', b'{"query": ["q"], "documents": ["a"]}',
    b'{"query": "q", "documents": [null]}', b'{"query": "q", "documents": ["a"], "top_n": 1.5}',
    b'{"query": "q", "documents": ["' + b"x " * 5000 + b'"]}',
])
def test_bad_requests_are_400s_never_500s(rsim: SimulatorThread, body: bytes) -> None:
    resp = httpx.post(rsim.url + "/rerank", content=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "BadRequestError"
