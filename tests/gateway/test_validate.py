from __future__ import annotations

import random

import orjson
import pytest

from modelyard.gateway.validate import duplicate_key, problem

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]


def chat(**fields: object) -> dict[str, object]:
    return {"model": "m", "messages": HELLO, **fields}


@pytest.mark.parametrize(("payload", "field"), [
    (chat(stream="yes"), "stream"), (chat(stream=1), "stream"), (chat(stream_options="x"), "stream_options"),
    (chat(stream_options=[1]), "stream_options"),
    (chat(stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
    (chat(max_tokens=10**19), "max_tokens"), (chat(max_tokens="8"), "max_tokens"),
    (chat(max_tokens=True), "max_tokens"),
    (chat(max_tokens=-1), "max_tokens"), (chat(max_completion_tokens=1.5), "max_completion_tokens"),
    (chat(temperature="hot"), "temperature"), (chat(temperature=3), "temperature"), (chat(top_p=1.5), "top_p"),
    (chat(presence_penalty=-3), "presence_penalty"), (chat(user={}), "user"), (chat(n=0), "n"), (chat(n=10**6), "n"),
    (chat(seed=2**64), "seed"), (chat(seed="1"), "seed"), (chat(stop=3), "stop"), (chat(stop=[1]), "stop"),
    (chat(stop=["x"] * 65), "stop"), (chat(logprobs=3), "logprobs"), (chat(top_logprobs=21), "top_logprobs"),
    (chat(logit_bias={"1": 500}), "logit_bias"), (chat(tools={}), "tools"), (chat(tools=[1]), "tools[0]"),
    (chat(response_format="json"), "response_format"),
    ({"model": "m"}, "messages"), (chat(messages=None), "messages"), (chat(messages=[]), "messages"),
    (chat(messages={}), "messages"),
    (chat(messages=[{}]), "messages[0].role"), (chat(messages=["hi"]), "messages[0]"),
    (chat(messages=[{"role": 1, "content": "x"}]), "messages[0].role"),
    (chat(messages=[{"role": "user", "content": 123}]), "messages[0].content"),
    (chat(messages=[{"role": "user"}]), "messages[0].content"),
    (chat(messages=[{"role": "user", "content": None}]), "messages[0].content"),
    (chat(messages=[*HELLO, {"role": "user", "content": [{"text": "x"}]}]), "messages[1].content[0]"),
])
def test_a_chat_field_the_api_does_not_allow_is_named(payload: dict[str, object], field: str) -> None:
    found = problem(CHAT, payload)
    assert found is not None and found.param == field, found


@pytest.mark.parametrize(("path", "payload", "field"), [
    ("/v1/completions", {"model": "m"}, "prompt"), ("/v1/completions", {"prompt": 5}, "prompt"),
    ("/v1/completions", {"prompt": []}, "prompt"), ("/v1/completions", {"prompt": ["a", 1]}, "prompt"),
    ("/v1/completions", {"prompt": "a", "logprobs": True}, "logprobs"),
    ("/v1/completions", {"prompt": "a", "echo": "no"}, "echo"),
    ("/v1/embeddings", {"model": "m"}, "input"), ("/v1/embeddings", {"input": {}}, "input"),
    ("/v1/embeddings", {"input": [[1, "a"]]}, "input"),
    ("/v1/embeddings", {"input": "a", "dimensions": 0}, "dimensions"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ("/v1/rerank", {"documents": ["a"]}, "query"), ("/v1/rerank", {"query": "q"}, "documents"),
    ("/v1/rerank", {"query": 1, "documents": ["a"]}, "query"),
    ("/v1/rerank", {"query": "q", "documents": []}, "documents"),
    ("/v1/rerank", {"query": "q", "documents": [{}]}, "documents[0]"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "2"}, "top_n"),
])
def test_each_endpoint_has_its_own_schema(path: str, payload: dict[str, object], field: str) -> None:
    found = problem(path, payload)
    assert found is not None and found.param == field, found


@pytest.mark.parametrize(("path", "payload"), [
    (CHAT, chat(stream=True, stream_options={"include_usage": True}, max_tokens=16, temperature=0, top_p=0.9,
                user="u", seed=-1, stop=["\n"], logprobs=True, top_logprobs=2, n=2, stream_extra="anything")),
    (CHAT, chat(stream=None, max_tokens=None, temperature=None)),
    (CHAT, chat(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:,"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "1", "content": "42"}], tools=[{"type": "function"}], tool_choice="auto")),
    ("/v1/completions", {"prompt": "a", "logprobs": 2, "echo": True, "stop": "x"}),
    ("/v1/completions", {"prompt": [1, 2, 3]}), ("/v1/completions", {"prompt": [[1, 2], [3]]}),
    ("/v1/embeddings", {"input": ["a", "b"], "encoding_format": "float", "dimensions": 8}),
    ("/v1/rerank", {"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1, "return_documents": False}),
])
def test_what_the_api_allows_passes(path: str, payload: dict[str, object]) -> None:
    assert problem(path, payload, orjson.dumps(payload)) is None


@pytest.mark.parametrize("body", [
    b'{"model": "a", "messages": [{"role": "user", "content": "hi"}], "model": "b"}',
    b'{"model":"a","model":"b","messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"a","messages":[{"role":"user","content":"hi"}],"mod\\u0065l":"b"}',  # spelled otherwise
    b'{"model":"a","user":"x","messages":[{"role":"user","content":"hi"}],"user":"y"}',
])
def test_a_key_given_twice_is_refused(body: bytes) -> None:
    found = problem(CHAT, orjson.loads(body), body)
    assert found is not None and found.code == "duplicate_key" and found.param in ("model", "user"), found


@pytest.mark.parametrize("body", [
    b'{"model": "a", "user": "u", "messages": [{"role": "user", "content": "say \\"model\\": x"}]}',
    b'{"model":"a","messages":[{"role":"user","content":"model"}],"response_format":{"type":"json_schema",'
    b'"json_schema":{"schema":{"properties":{"model":{"type":"string"}}}}}}',
    b'{"model":"a","messages":[{"role":"user","content":"caf\\u00e9"}]}',
    b'{"x-odd key":1,"model":"a","messages":[{"role":"user","content":"hi"}]}',
])
def test_a_key_that_also_occurs_elsewhere_is_not_a_duplicate(body: bytes) -> None:
    assert duplicate_key(body, orjson.loads(body)) is None
    assert problem(CHAT, orjson.loads(body), body) is None


def test_a_body_deeper_than_the_gateway_could_write_again_is_refused_not_a_500() -> None:
    start = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"x":'
    for depth in (300, 1020):  # orjson reads 1024 levels, writes 255: a stream's body is written again (main: 500)
        deep = start + b"[" * depth + b"]" * depth + b"}"
        found = problem(CHAT, orjson.loads(deep), deep)
        assert found is not None and found.code == "invalid_json"
    ok = start + b"[" * 200 + b"]" * 200 + b"}"
    assert problem(CHAT, orjson.loads(ok), ok) is None


def random_json(rng: random.Random, depth: int = 0) -> object:
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == "dict":
        keys = ["role", "content", "type", "text", "include_usage", "x"]
        return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}
    return {"null": None, "bool": rng.random() < 0.5, "int": rng.choice([0, 1, -1, 2**31, 2**63 - 1, -(2**63)]),
            "float": rng.choice([0.0, 0.5, 2.5, -3.0, 1e308]), "str": rng.choice(["", "x", "user", "\n", "é"])}[kind]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank"])
def test_any_json_object_gets_an_answer_never_an_exception(path: str) -> None:
    rng = random.Random(path)
    fields = ["model", "messages", "prompt", "input", "query", "documents", "stream", "stream_options", "max_tokens",
              "temperature", "n", "stop", "seed", "logprobs", "user", "logit_bias", "tools", "top_n", "dimensions"]
    for _ in range(2000):
        payload = {name: random_json(rng) for name in rng.sample(fields, rng.randrange(1, 8))}
        found = problem(path, payload, orjson.dumps(payload))
        assert found is None or (found.message and found.code)
