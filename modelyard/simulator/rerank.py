from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from modelyard.simulator.api import ApiError
from modelyard.simulator.tokens import tokenize

WORD = re.compile(r"\w+")
COVERAGE_WEIGHT = 0.8  # the rest of the score is the Jaccard overlap, which prefers the more focused document


@dataclass(frozen=True)
class RerankRequest:
    """A parsed /rerank request (vLLM's, which follows Jina's and Cohere's)."""

    query: str
    documents: list[str]
    top_n: int  # how many results to give back: all of them unless top_n > 0 asks for fewer
    return_documents: bool


def parse_rerank(body: dict[str, Any]) -> RerankRequest:
    query = body.get("query")
    if isinstance(query, dict):
        query = query.get("text")
    if not isinstance(query, str) or not query:
        raise ApiError(400, "query must be a non-empty string", "query")
    raw = body.get("documents")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "documents must be a non-empty list of strings or of {\"text\": ...} objects",
                       "documents")
    documents = [_text_of(doc, i) for i, doc in enumerate(raw)]
    top_n = body.get("top_n")
    if top_n is None:
        top_n = 0
    if not isinstance(top_n, int) or isinstance(top_n, bool):
        raise ApiError(400, "top_n must be an integer", "top_n")
    return_documents = body.get("return_documents", True)
    if not isinstance(return_documents, bool):
        raise ApiError(400, "return_documents must be a boolean", "return_documents")
    return RerankRequest(query=query, documents=documents,
                         top_n=top_n if 0 < top_n < len(documents) else len(documents),
                         return_documents=return_documents)


def _text_of(doc: Any, index: int) -> str:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("text"), str):
        return str(doc["text"])
    raise ApiError(400, f"documents[{index}] must be a string or an object with a \"text\" string", "documents")


def rerank_inputs(request: RerankRequest, cross_encoder: bool, max_model_len: int) -> list[list[int]]:
    """What the engine prefills: a cross-encoder reads the query with each document (one sequence a pair); an
    embedding model embeds the query once and each document on its own, as vLLM scores with a bi-encoder."""
    query = tokenize(request.query)
    documents = [tokenize(doc) for doc in request.documents]
    inputs = [query + doc for doc in documents] if cross_encoder else [query, *documents]
    for i, tokens in enumerate(inputs):
        if len(tokens) > max_model_len:
            what = f"the query with documents[{i}]" if cross_encoder else "the query" if i == 0 \
                else f"documents[{i - 1}]"
            raise ApiError(400, f"This model's maximum context length is {max_model_len} tokens. However, "
                                f"{what} has {len(tokens)} tokens. Please reduce the length of the input.",
                           "documents")
    return inputs


def words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def relevance(query: str, document: str) -> float:
    """How much of the query's vocabulary the document holds, in [0, 1]: mostly the share of the query's distinct
    words that it contains, the rest its Jaccard overlap with the query (1.0: the same words, 0.0: none shared)."""
    q, d = words(query), words(document)
    if not q or not d:
        return 0.0
    shared = len(q & d)
    return COVERAGE_WEIGHT * shared / len(q) + (1.0 - COVERAGE_WEIGHT) * shared / len(q | d)


def rerank_response(model: str, request: RerankRequest, tokens: int) -> bytes:
    """vLLM's answer: the top_n documents by relevance, best first (ties keep the documents' order)."""
    scores = [relevance(request.query, doc) for doc in request.documents]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:request.top_n]
    results: list[dict[str, Any]] = []
    for i in order:
        result: dict[str, Any] = {"index": i}
        if request.return_documents:
            result["document"] = {"text": request.documents[i]}
        result["relevance_score"] = scores[i]
        results.append(result)
    return orjson.dumps({"id": "rerank-" + uuid.uuid4().hex, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "results": results})
