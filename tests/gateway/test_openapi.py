from __future__ import annotations

import jsonschema

from modelyard.gateway.app import per_model
from modelyard.gateway.openapi import openapi_document
from modelyard.gateway.request import GENERATION_PATHS
from modelyard.spec.loader import parse_spec

SPEC = """
version: 1
models:
  - {name: chat, engine: simulator}
  - {name: embed, engine: simulator, task: embedding}
"""


def test_the_description_covers_every_public_route_with_the_models_that_serve_it() -> None:
    spec = parse_spec(SPEC)
    document = openapi_document(spec, per_model(spec)[1])
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {*GENERATION_PATHS, "/v1/models", "/health"}
    schemas = document["components"]["schemas"]
    assert schemas["ChatCompletionRequest"]["properties"]["model"]["enum"] == ["chat"]
    assert schemas["EmbeddingRequest"]["properties"]["model"]["enum"] == ["embed"]
    assert document["paths"]["/health"]["get"]["security"] == []  # no key
    for name in ("ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "RerankRequest", "Error"):
        jsonschema.Draft202012Validator.check_schema(schemas[name])


def test_the_request_schema_says_what_the_gateway_refuses() -> None:
    spec = parse_spec(SPEC)
    chat = openapi_document(spec, per_model(spec)[1])["components"]["schemas"]["ChatCompletionRequest"]
    valid = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True,
             "stream_options": {"include_usage": True}, "max_tokens": 5, "extra_field": 1}
    jsonschema.validate(valid, chat)
    for wrong in ({"stream": "yes"}, {"stream_options": "x"}, {"max_tokens": 10**19}, {"user": {}},
                  {"temperature": "hot"}, {"messages": []}):
        assert not jsonschema.Draft202012Validator(chat).is_valid({**valid, **wrong}), wrong
