"""modelyard/gateway/admin.py: /admin/keys takes only bounded inputs (over HTTP to the ASGI app in this process)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from modelyard.gateway.asgi import create_gateway
from modelyard.gateway.auth import KeyRing
from modelyard.routing.endpoints import EndpointTable
from modelyard.spec.schema import YardSpec
from modelyard.store.base import MAX_LIMIT
from modelyard.store.sqlite import SQLiteStore

ADMIN = "admin-" + "k" * 30
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def run(body: Callable[[httpx.AsyncClient], Awaitable[None]], tmp_path: Path) -> None:
    async def go() -> None:
        store = await SQLiteStore.open(tmp_path / "modelyard.db")
        spec = YardSpec.model_validate({"version": 1, "models": [{"name": "m", "engine": "simulator"}]})
        app = create_gateway(spec, EndpointTable(), KeyRing(), store, admin_key=ADMIN)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
                await body(client)
        finally:
            await store.close()
    asyncio.run(go())


@pytest.mark.parametrize(("fields", "code"), [
    ({"rpm": 2**63}, "invalid_limits"), ({"tpm": MAX_LIMIT + 1}, "invalid_limits"),
    ({"budget_tokens": 10**30}, "invalid_limits"), ({"max_concurrency": -1}, "invalid_limits"),
    ({"expires_in_s": 1e308}, "invalid_limits"), ({"expires_in_s": True}, "invalid_limits"),
    ({"expires_in_s": -5}, "invalid_limits"), ({"models": ["x"] * 2000}, "invalid_limits"),
    ({"models": ["a\nb"]}, "invalid_limits"), ({"name": "a\x00b"}, "invalid_name"), ({"name": "a\nb"}, "invalid_name"),
    ({"name": "\x1b[31mred"}, "invalid_name"), ({"name": "x" * 129}, "invalid_name"),
    ({"name": " pad"}, "invalid_name"), ({"name": 5}, "invalid_name"),
])
def test_out_of_bounds_inputs_are_a_400_and_nothing_is_created(tmp_path: Path, fields: dict[str, object],
                                                                 code: str) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        reply = await client.post("/admin/keys", headers=AUTH, json={"name": "team-a", **fields})
        assert reply.status_code == 400 and reply.json()["error"]["code"] == code, reply.text  # rpm 2**63: 500
        listed = await client.get("/admin/keys", headers=AUTH)
        assert listed.json()["data"] == []
    run(body, tmp_path)


def test_what_is_in_bounds_is_created(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        reply = await client.post("/admin/keys", headers=AUTH, json={
            "name": "team a (ü)", "rpm": MAX_LIMIT, "budget_tokens": 10**12, "expires_in_s": 30 * 86400,
            "models": ["m"]})
        assert reply.status_code == 201, reply.text
    run(body, tmp_path)


def test_a_body_past_the_limit_is_refused_unread(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        reply = await client.post("/admin/keys", headers=AUTH, content=b'{"name": "' + b"x" * 200_000 + b'"}')
        assert reply.status_code == 413
    run(body, tmp_path)
