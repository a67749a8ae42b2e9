"""`/admin/keys`: the key management of `modelyard keys`, over HTTP, for the holder of the admin key.

GET /admin/keys                  list (never secrets)
POST /admin/keys                 {"name", "models": [...], "rpm", "tpm", "max_concurrency", "budget_tokens",
                                  "priority", "expires_in_s"} -> the record and its secret, shown once
DELETE /admin/keys/{name}        revoke
POST /admin/keys/{name}/rotate   a new secret, shown once
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelyard.gateway.auth import Credentials
from modelyard.gateway.errors import openai_error
from modelyard.store.base import (
    PRIORITIES,
    KeyLimits,
    KeyRecord,
    Store,
    StoreError,
    limits_problem,
    name_problem,
)

LIMIT_FIELDS = ("rpm", "tpm", "max_concurrency", "budget_tokens")
MAX_BODY_BYTES = 64 * 1024  # a key's settings; read no further


def public(record: KeyRecord) -> dict[str, Any]:
    data = asdict(record)
    data.pop("key_hash")
    return data


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def parse_limits(body: Any) -> KeyLimits | str:
    """KeyLimits from a request body, or what is wrong with it (every number bounded: store/base.limits_problem)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    values: dict[str, Any] = {}
    for field in LIMIT_FIELDS:
        value = body.get(field, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{field} must be a non-negative integer"
        values[field] = value
    models = body.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        return "models must be a list of model names"
    priority = body.get("priority", "interactive")
    if priority not in PRIORITIES:
        return f"priority must be one of {', '.join(PRIORITIES)}"
    expires_in = body.get("expires_in_s")
    if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, int | float)
                                   or expires_in <= 0):
        return "expires_in_s must be a positive number of seconds"
    now = time.time()
    limits = KeyLimits(models=tuple(models), priority=priority,
                       expires_at=now + expires_in if expires_in else None, **values)
    return limits_problem(limits, now) or limits


async def read_bounded(request: Request, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The body, or None once it passes `limit` (read no further)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return body


class AdminApi:
    def __init__(self, store: Store | None, admin_key: str | None) -> None:
        self.store = store
        self.credentials = Credentials([admin_key])

    def routes(self) -> list[Route]:
        return [
            Route("/admin/keys", self.list_keys, methods=["GET"]),
            Route("/admin/keys", self.create_key, methods=["POST"]),
            Route("/admin/keys/{name:path}/rotate", self.rotate_key, methods=["POST"]),
            Route("/admin/keys/{name:path}", self.revoke_key, methods=["DELETE"]),
        ]

    def _deny(self, request: Request) -> Response | None:
        if not self.credentials.enabled:
            return openai_error(403, "the admin API is off: start the gateway with $MODELYARD_ADMIN_KEY set",
                                "admin_disabled")
        if not self.credentials.bearer_ok(request.headers.get("authorization")):
            return openai_error(401, "this needs the admin key", "invalid_admin_key")
        if self.store is None:
            return openai_error(503, "no key store is configured", "no_store")
        return None

    async def list_keys(self, request: Request) -> Response:
        if denied := self._deny(request):
            return denied
        assert self.store is not None
        return _json({"object": "list", "data": [public(k) for k in await self.store.list_keys()]})

    async def create_key(self, request: Request) -> Response:
        if denied := self._deny(request):
            return denied
        assert self.store is not None
        raw = await read_bounded(request)
        if raw is None:
            return openai_error(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return openai_error(400, "the request body is not valid JSON", "invalid_json")
        name = body.get("name") if isinstance(body, dict) else None
        if (wrong := name_problem(name)) is not None or not isinstance(name, str):
            return openai_error(400, wrong or "name must be a string", "invalid_name", "name")
        limits = parse_limits(body)
        if isinstance(limits, str):
            return openai_error(400, limits, "invalid_limits")
        try:
            record, secret = await self.store.create_key(name, limits)
        except StoreError as exc:
            return openai_error(409, str(exc), "key_exists")
        return _json({**public(record), "secret": secret}, status=201)

    async def revoke_key(self, request: Request) -> Response:
        if denied := self._deny(request):
            return denied
        assert self.store is not None
        try:
            record = await self.store.revoke_key(request.path_params["name"])
        except StoreError as exc:
            return openai_error(404, str(exc), "key_not_found")
        return _json(public(record))

    async def rotate_key(self, request: Request) -> Response:
        if denied := self._deny(request):
            return denied
        assert self.store is not None
        try:
            record, secret = await self.store.rotate_key(request.path_params["name"])
        except StoreError as exc:
            return openai_error(404, str(exc), "key_not_found")
        return _json({**public(record), "secret": secret})
