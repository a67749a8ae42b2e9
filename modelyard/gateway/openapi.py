"""`/openapi.json`: an OpenAPI 3.1 description of the gateway's public routes, made from the spec (the model names
each route takes are the spec's models that serve it).

The request bodies are the OpenAI request schema (its types and ranges) for the fields the gateway reads, checks
(gateway/validate.py) or forwards, with the gateway's own bounds where it has them (`max_tokens`); any other field
is allowed (the engine gets it as it came). Every error
is OpenAI-shaped (`Error`). Served without a key: it says nothing that the OpenAI API reference does not, besides
the model names, which `/v1/models` gives any key holder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from modelyard import __version__
from modelyard.gateway.validate import MAX_TOKENS_BOUND
from modelyard.spec.schema import YardSpec

if TYPE_CHECKING:
    from modelyard.gateway.app import Gateway

JSON = "application/json"
TOKENS = {"type": "integer", "minimum": 0, "maximum": MAX_TOKENS_BOUND}
TEXT_OR_TEXTS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}}
STREAMING = {"stream": {"type": ["boolean", "null"]},
             "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}}}
PENALTY = {"type": "number", "minimum": -2, "maximum": 2}
SAMPLING = {"max_tokens": TOKENS, "max_completion_tokens": TOKENS,
            "n": {"type": "integer", "minimum": 1, "maximum": 128},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1}, "presence_penalty": PENALTY,
            "frequency_penalty": PENALTY, "seed": {"type": "integer"},
            "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
            "user": {"type": "string"}}
MESSAGE = {"type": "object", "required": ["role", "content"],
           "properties": {"role": {"type": "string", "minLength": 1,  # engines take custom roles too (vLLM)
                                    "examples": ["system", "developer", "user", "assistant", "tool"]},
                          "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}},
                                                {"type": "null"}]},
                          "name": {"type": "string"}}}
ERROR = {"type": "object", "required": ["error"],
         "properties": {"error": {"type": "object", "required": ["message", "type"],
                                  "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                                 "param": {"type": ["string", "null"]},
                                                 "code": {"type": ["string", "null"]}}}}}
ERRORS = {"400": "the request is not as the API says (`param` names the field)", "401": "no key, or a wrong one",
          "403": "the key may not use this model", "404": "no such model", "413": "the body is too large",
          "429": "a limit of the key (rpm, tpm, concurrency, budget); `Retry-After` says when",
          "502": "the replica failed while answering", "503": "no replica could serve it now, or the model is "
          "overloaded, or the limiter is unavailable; `Retry-After` says when", "504": "the replica did not answer "
          "in time"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _body(models: list[str], required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """A request body; an optional field may be null, which the gateway (validate.py) takes as not given, as the
    SDKs and vLLM do."""
    model: dict[str, Any] = {"type": "string", "enum": models} if models else {"type": "string"}
    optional = {name: {"anyOf": [schema, {"type": "null"}]} for name, schema in properties.items()
                if name not in required}
    return {"type": "object", "required": ["model", *required], "additionalProperties": True,
            "properties": {"model": model, **properties, **optional}}


def _generation(summary: str, schema: str, streamed: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {JSON: {"schema": {"type": "object"}}}
    if streamed:
        answer["text/event-stream"] = {"schema": {"type": "string"}}
    return {"post": {"summary": summary, "security": [{"key": []}],
                     "requestBody": {"required": True,
                                     "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}},
                     "responses": {"200": {"description": "the engine's answer" + (
                         " (a server-sent event stream when `stream` is true)" if streamed else ""),
                                           "content": answer},
                                   **{code: _error(text) for code, text in ERRORS.items()}}}}


def request_schemas(served: dict[str, list[str]]) -> dict[str, Any]:
    """The request bodies, by schema name; `served`: by gateway path, the models that serve it."""
    return {
        "ChatCompletionRequest": _body(served.get("/v1/chat/completions", []), ["messages"], {
            "messages": {"type": "array", "minItems": 1, "items": MESSAGE}, **STREAMING, **SAMPLING}),
        "CompletionRequest": _body(served.get("/v1/completions", []), ["prompt"], {
            "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, TOKEN_IDS,
                                 {"type": "array", "items": TOKEN_IDS}]}, **STREAMING, **SAMPLING}),
        "EmbeddingRequest": _body(served.get("/v1/embeddings", []), ["input"], {
            "input": {"oneOf": [*TEXT_OR_TEXTS["oneOf"], TOKEN_IDS, {"type": "array", "items": TOKEN_IDS}]},
            "encoding_format": {"enum": ["float", "base64"]}, "dimensions": TOKENS, "user": {"type": "string"}}),
        "RerankRequest": _body(served.get("/v1/rerank", []), ["query", "documents"], {
            "query": {"type": "string"}, "documents": {"type": "array", "items": {"type": "string"}},
            "top_n": TOKENS}),
    }


def openapi_document(spec: YardSpec, served: dict[str, frozenset[str]]) -> dict[str, Any]:
    """`served`: by model, the gateway paths it serves (`Gateway.serves`)."""
    by_path: dict[str, list[str]] = {}
    for m in spec.models:
        for path in sorted(served.get(m.name, ())):
            by_path.setdefault(path, []).append(m.name)
    paths: dict[str, Any] = {
        "/v1/chat/completions": _generation("A chat completion", "ChatCompletionRequest", True),
        "/v1/completions": _generation("A text completion", "CompletionRequest", True),
        "/v1/embeddings": _generation("Embeddings", "EmbeddingRequest", False),
        **{path: _generation("Documents ranked against a query", "RerankRequest", False)
           for path in ("/v1/rerank", "/rerank", "/v2/rerank")},
        "/v1/models": {"get": {"summary": "The models this key may use", "security": [{"key": []}],
                               "responses": {"200": {"description": "the models",
                                                     "content": {JSON: {"schema": {"$ref": "#/components/schemas/"
                                                                                   "ModelList"}}}},
                                             "401": _error(ERRORS["401"])}}},
        "/health": {"get": {"summary": "By model: replicas ready (routable), ejected, draining, ...", "security": [],
                            "responses": {"200": {"description": "every model has a ready replica",
                                                  "content": {JSON: {"schema": {"$ref": "#/components/schemas/"
                                                                                "Health"}}}},
                                          "503": {"description": "a model has none",
                                                  "content": {JSON: {"schema": {"$ref": "#/components/schemas/"
                                                                                "Health"}}}}}}},
    }
    model_entry = {"type": "object", "required": ["id", "object"],
                   "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                                  "created": {"type": "integer"}, "owned_by": {"type": "string"}}}
    schemas = {**request_schemas(by_path), "Error": ERROR,
               "ModelList": {"type": "object", "required": ["object", "data"],
                             "properties": {"object": {"const": "list"},
                                            "data": {"type": "array", "items": model_entry}}},
               "Health": {"type": "object", "required": ["status", "models"],
                          "properties": {"status": {"enum": ["ok", "degraded"]},
                                         "models": {"type": "object", "additionalProperties": {
                                             "type": "object", "additionalProperties": {
                                                 "type": ["integer", "string"]}}}}}}
    return {"openapi": "3.1.0",
            "info": {"title": "modelyard gateway", "version": __version__,
                     "description": "The OpenAI-compatible API of a modelyard cluster."},
            "paths": paths,
            "components": {"schemas": schemas,
                           "securitySchemes": {"key": {"type": "http", "scheme": "bearer"}}}}


class OpenApiEndpoint:
    """GET /openapi.json, made again only when the gateway's spec changes (`modelyard apply`)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._made: tuple[YardSpec, bytes] | None = None

    async def serve(self, request: Request) -> Response:
        spec = self.gateway.spec
        if self._made is None or self._made[0] is not spec:
            self._made = (spec, orjson.dumps(openapi_document(spec, self.gateway.serves)))
        return Response(self._made[1], media_type=JSON)
