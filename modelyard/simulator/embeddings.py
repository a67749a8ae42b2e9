from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modelyard.simulator.api import ApiError
from modelyard.simulator.tokens import VOCAB_SIZE, render_chat, tokenize

Vector = npt.NDArray[np.float64]
ENCODINGS = ("float", "base64")
BUCKETS = 4096  # feature-hashing width: a text is a signed bag of token and token-pair hashes over these buckets
PAIR_WEIGHT = 0.5  # neighbouring tokens count too, so that word order moves a vector a little
_U64 = np.uint64


@dataclass(frozen=True)
class EmbeddingRequest:
    """A parsed /v1/embeddings request: one token list an input."""

    inputs: list[list[int]]
    encoding_format: str
    dimensions: int | None


def parse_embedding(body: dict[str, Any], max_model_len: int, model_dim: int, model: str) -> EmbeddingRequest:
    inputs = _inputs(body)
    for tokens in inputs:
        if len(tokens) > max_model_len:
            raise ApiError(400, f"This model's maximum context length is {max_model_len} tokens. However, you "
                                f"requested {len(tokens)} tokens in the input for embedding generation. Please "
                                "reduce the length of the input.", "input")
    encoding = body.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if encoding not in ENCODINGS:
        raise ApiError(400, f"encoding_format must be one of {', '.join(ENCODINGS)}", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            raise ApiError(400, "dimensions must be a positive integer", "dimensions")
        if dimensions > model_dim:
            raise ApiError(400, f"Model \"{model}\" gives vectors of {model_dim} dimensions; dimensions "
                                f"({dimensions}) cannot be larger", "dimensions")
    return EmbeddingRequest(inputs=inputs, encoding_format=str(encoding), dimensions=dimensions)


def _inputs(body: dict[str, Any]) -> list[list[int]]:
    """`input` as OpenAI and vLLM take it (a string, strings, token ids, lists of token ids), or chat `messages`."""
    if "messages" in body and "input" not in body:
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list", "messages")
        try:
            return [tokenize(render_chat(messages, bool(body.get("add_generation_prompt", False))))]
        except ValueError as exc:
            raise ApiError(400, str(exc), "messages") from None
    raw = body.get("input")
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(_is_token(t) for t in raw):
        items = [raw]
    elif isinstance(raw, list) and raw:
        items = raw
    elif isinstance(raw, list):
        raise ApiError(400, "input must not be an empty list", "input")
    else:
        raise ApiError(400, "input must be a string, a list of strings, a list of token ids or a list of lists of "
                            "token ids", "input")
    return [_tokens_of(item, i) for i, item in enumerate(items)]


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tokens_of(item: Any, index: int) -> list[int]:
    if isinstance(item, str):
        tokens = tokenize(item)
    elif isinstance(item, list) and all(_is_token(t) for t in item):
        bad = next((t for t in item if not 0 <= t < VOCAB_SIZE), None)
        if bad is not None:
            raise ApiError(400, f"input[{index}]: token id {bad} is out of vocabulary (0..{VOCAB_SIZE - 1})",
                           "input")
        tokens = list(item)
    else:
        raise ApiError(400, f"input[{index}] must be a string or a list of token ids, not a mix", "input")
    if not tokens:
        raise ApiError(400, f"input[{index}] is empty: give some text or token ids", "input")
    return tokens


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic): a fixed hash, the same in every process."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _unit_uniform(x: npt.NDArray[np.uint64]) -> Vector:
    """Hashes to floats uniform in [-1, 1)."""
    return (x >> _U64(11)).astype(np.float64) * (2.0 / 2.0**53) - 1.0


class Embedder:
    """Deterministic text vectors: a signed bag of token and token-pair hashes (feature hashing over BUCKETS),
    times a fixed pseudo-random projection. No seed of the process enters, so equal token lists give equal vectors
    in every replica and every run; texts that share tokens share terms of the sum and come out closer than texts
    that share none (whose vectors are nearly orthogonal). Coordinate j depends on j only, not on the width, so
    the first d coordinates are the vector a d-dimensional model would give before normalising (Matryoshka)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        rows = _mix(np.arange(BUCKETS, dtype=np.uint64))
        cols = _mix(np.arange(dim, dtype=np.uint64) + _U64(0x51_4D_55_4C))
        self.projection = _unit_uniform(_mix(rows[:, None] ^ cols[None, :]))  # BUCKETS x dim

    def embed(self, tokens: list[int]) -> Vector:
        ids = np.asarray(tokens, dtype=np.uint64)
        pairs = _mix(ids[:-1] * _U64(VOCAB_SIZE) + ids[1:] + _U64(1 << 62))
        keys = _mix(np.concatenate([ids, pairs]))
        weights = np.concatenate([np.ones(len(ids)), np.full(len(pairs), PAIR_WEIGHT)])
        signs = np.where((keys >> _U64(63)) == 1, -1.0, 1.0)
        buckets = (keys % _U64(BUCKETS)).astype(np.intp)
        sketch = np.bincount(buckets, weights=weights * signs, minlength=BUCKETS)
        used = np.unique(buckets)  # only the rows that the text touches: much cheaper than the full product
        return normalised(sketch[used] @ self.projection[used])


def normalised(vector: Vector) -> Vector:
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:  # only if every term cancels out: any fixed unit vector will do
        unit = np.zeros(len(vector))
        unit[0] = 1.0
        return unit
    return vector / norm


def truncated(vector: Vector, dimensions: int | None) -> Vector:
    """Matryoshka-style: the first `dimensions` coordinates, normalised again."""
    if dimensions is None or dimensions >= len(vector):
        return vector
    return normalised(vector[:dimensions])


def encode(vector: Vector, encoding_format: str) -> npt.NDArray[np.float32] | str:
    """float32 coordinates (orjson writes them as JSON numbers), or their little-endian bytes in base64, as OpenAI
    and vLLM give them."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32)


def embedding_response(model: str, vectors: list[Vector], request: EmbeddingRequest) -> bytes:
    tokens = sum(len(t) for t in request.inputs)
    data = [{"index": i, "object": "embedding",
             "embedding": encode(truncated(v, request.dimensions), request.encoding_format)}
            for i, v in enumerate(vectors)]
    return orjson.dumps({"id": "embd-" + uuid.uuid4().hex, "object": "list", "created": int(time.time()),
                         "model": model, "data": data,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                                   "prompt_tokens_details": None}}, option=orjson.OPT_SERIALIZE_NUMPY)
