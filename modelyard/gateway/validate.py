"""The OpenAI request schema at the door, for the fields that the gateway reads or forwards and that a client can get
wrong: a 400 naming the field (`param`), before any limit, queue or engine sees the request (a string `stream`, a
`max_tokens` of 10**19 that would overflow the limiter, `messages: [{}]`, `temperature: "hot"`, a body with `model`
twice, which the gateway would route by one value and the engine read by another).

Each endpoint has a table of field -> check; a request's own fields are looked up in it (a body has a handful of
fields, the table a few dozen), the required ones are checked apart. Fields that are not in the table go to the
engine as they are (engines have their own extensions). docs/benchmarks.md has the cost against `orjson.loads`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson

MAX_TOKENS_BOUND = 2**31 - 1
INT64 = 2**63
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
KEY = re.compile(rb'"([A-Za-z_][A-Za-z0-9_]{0,63})"\s*:')  # a key at any depth (a match starts at an opening quote)
MAX_DEPTH = 255  # what orjson writes: the gateway writes a body again (stream_options, cache_salt, upstream_model)
MAX_STOP = 64  # OpenAI takes 4 stop sequences, vLLM any number: a bound that lets both through

Check = Callable[[Any, str], str | None]  # (value, its param name) -> what is wrong, or None


class Problem(NamedTuple):
    param: str | None
    message: str
    code: str = "invalid_type"


def integer(low: int, high: int) -> Check:
    def check(value: Any, name: str) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"{name} must be an integer from {low} to {high}"
        return None
    return check


def number(low: float, high: float) -> Check:
    def check(value: Any, name: str) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            return f"{name} must be a number from {low:g} to {high:g}"
        return None
    return check


def boolean(value: Any, name: str) -> str | None:
    return None if isinstance(value, bool) else f"{name} must be true or false"


def string(value: Any, name: str) -> str | None:
    return None if isinstance(value, str) else f"{name} must be a string"


def obj(value: Any, name: str) -> str | None:
    return None if isinstance(value, dict) else f"{name} must be an object"


def string_or_object(value: Any, name: str) -> str | None:
    return None if isinstance(value, str | dict) else f"{name} must be a string or an object"


def stream_options(value: Any, name: str) -> str | None:
    if not isinstance(value, dict):
        return f"{name} must be an object"
    usage = value.get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        return f"{name}.include_usage must be true or false"
    return None


def stop(value: Any, name: str) -> str | None:
    if isinstance(value, str):
        return None
    if not isinstance(value, list) or len(value) > MAX_STOP or not all(isinstance(s, str) for s in value):
        return f"{name} must be a string or a list of at most {MAX_STOP} strings"
    return None


def logit_bias(value: Any, name: str) -> str | None:
    if not isinstance(value, dict) or not all(
            not isinstance(v, bool) and isinstance(v, int | float) and -100 <= v <= 100 for v in value.values()):
        return f"{name} must be an object of token ids to numbers from -100 to 100"
    return None


def list_of_objects(value: Any, name: str) -> str | None:
    if not isinstance(value, list):
        return f"{name} must be a list"
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("type", ""), str):
            return f"{name}[{i}] must be an object with a string type"
    return None


def one_of(*values: str) -> Check:
    def check(value: Any, name: str) -> str | None:
        return None if value in values else f"{name} must be one of {', '.join(values)}"
    return check


def tokens_or_texts(value: Any, name: str) -> str | None:
    """A prompt or an embedding's input: a string, a non-empty list of strings, of token ids, or of lists of token
    ids."""
    if isinstance(value, str):
        return None
    if isinstance(value, list) and value and (
            all(isinstance(v, str) for v in value) or all(_token(v) for v in value)
            or all(isinstance(v, list) and v and all(_token(t) for t in v) for v in value)):
        return None
    return f"{name} must be a string, or a non-empty list of strings, of token ids or of lists of token ids"


def _token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS_BOUND


def documents(value: Any, name: str) -> str | None:
    if not isinstance(value, list) or not value:
        return f"{name} must be a non-empty list"
    for i, doc in enumerate(value):
        if not isinstance(doc, str) and not (isinstance(doc, dict) and isinstance(doc.get("text"), str)):
            return f"{name}[{i}] must be a string or an object with a string text"
    return None


def messages(value: Any, name: str) -> str | None:
    if not isinstance(value, list) or not value:
        return f"{name} must be a non-empty list of messages"
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            return f"{name}[{i}] must be an object with a role and a content"
        role = message.get("role")
        if not isinstance(role, str) or not role:
            return f"{name}[{i}].role must be a non-empty string"
        if "name" in message and not isinstance(message["name"], str):
            return f"{name}[{i}].name must be a string"
        content = message.get("content")
        if isinstance(content, str):
            continue
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    return f"{name}[{i}].content[{j}] must be an object with a string type"
        elif content is not None or role != "assistant":  # only an assistant's (tool calls) may have none
            return f"{name}[{i}].content must be a string or a list of content parts"
    return None


SAMPLING: Mapping[str, Check] = {
    "stream": boolean, "stream_options": stream_options,
    "max_tokens": integer(0, MAX_TOKENS_BOUND), "max_completion_tokens": integer(0, MAX_TOKENS_BOUND),
    "n": integer(1, 128), "best_of": integer(1, 128), "seed": integer(-INT64, INT64 - 1),
    "temperature": number(0, 2), "top_p": number(0, 1), "min_p": number(0, 1), "top_k": integer(-1, 2**31 - 1),
    "presence_penalty": number(-2, 2), "frequency_penalty": number(-2, 2), "repetition_penalty": number(0, 2**31),
    "stop": stop, "logit_bias": logit_bias, "user": string, "top_logprobs": integer(0, 20),
}
CHAT: Mapping[str, Check] = {
    **SAMPLING, "messages": messages, "logprobs": boolean, "tools": list_of_objects, "tool_choice": string_or_object,
    "parallel_tool_calls": boolean, "response_format": obj,
}
COMPLETIONS: Mapping[str, Check] = {**SAMPLING, "prompt": tokens_or_texts, "logprobs": integer(0, 20),
                                    "echo": boolean, "suffix": string}
EMBEDDINGS: Mapping[str, Check] = {"input": tokens_or_texts, "encoding_format": one_of("float", "base64"),
                                   "dimensions": integer(1, 2**31 - 1), "user": string}
RERANK: Mapping[str, Check] = {"query": string, "documents": documents, "top_n": integer(0, MAX_TOKENS_BOUND),
                               "return_documents": boolean, "user": string}
# by the path each endpoint is served as: its fields' checks, and the fields it needs
SCHEMAS: Mapping[str, tuple[Mapping[str, Check], tuple[str, ...]]] = {
    "/v1/chat/completions": (CHAT, ("messages",)),
    "/v1/completions": (COMPLETIONS, ("prompt",)),
    "/v1/embeddings": (EMBEDDINGS, ("input",)),
    "/v1/rerank": (RERANK, ("query", "documents")),
}


def problem(path: str, payload: dict[str, Any], body: bytes = b"") -> Problem | None:
    """What is wrong with a request to `path` (the path it is served as), parsed as `payload` from `body`: the first
    field that is not as the API says, a field it needs and lacks, a field given twice; else None."""
    checks, required = SCHEMAS[path]
    for name in required:
        if payload.get(name) is None:
            return Problem(name, f"you must provide {name}", "missing_required_parameter")
    for name, value in payload.items():
        check = checks.get(name)
        if check is not None and value is not None:
            wrong = check(value, name)
            if wrong is not None:
                return Problem(wrong.partition(" ")[0], wrong)
    if body:
        try:
            twice = duplicate_key(body, payload)
        except (orjson.JSONEncodeError, RecursionError):  # deeper than the gateway could write it again
            return Problem(None, f"the request body is nested deeper than {MAX_DEPTH} levels", "invalid_json")
        if twice is not None:
            return Problem(twice, f"the body gives {twice} more than once", "duplicate_key")
    return None


def duplicate_key(body: bytes, payload: dict[str, Any]) -> str | None:
    """A top-level key that `body` gives more than once (orjson keeps the last, silently), else None.

    Three proofs that there is none, cheapest first. The body is what orjson writes for `payload` (the OpenAI SDKs'
    bodies are: compact, minimal escapes): a key given twice would be in the body and not in the dump. Else every
    key of `payload` is an ASCII identifier, no string in the body is written with `\\u` (the only escape that could
    spell such a key otherwise), and each key occurs once as a key (`"k":`, at any depth). Else the top level is
    read again with the standard library's parser, which keeps every pair."""
    if orjson.dumps(payload) == body:  # JSONEncodeError past 255 levels
        return None
    if b"\\u" not in body and all(IDENTIFIER.fullmatch(key) for key in payload):
        counts = Counter(KEY.findall(body))
        if all(counts[key.encode()] == 1 for key in payload):
            return None
    pairs = json.loads(body, object_pairs_hook=list)
    if len(pairs) == len(payload):
        return None
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return str(key)
        seen.add(key)
    return None
