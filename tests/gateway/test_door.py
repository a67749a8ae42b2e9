"""The gateway's door (gateway/app.py with tenancy.py, validate.py, auth.py, errors.py): what every route refuses
before anything reaches an engine, over HTTP to the ASGI app in this process, in front of a recording upstream on
a loopback port (the endpoint table is filled by hand)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web

from modelyard.fleet.process import free_port
from modelyard.gateway.asgi import create_gateway
from modelyard.gateway.auth import KeyRing, cache_salt
from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState
from modelyard.spec.schema import YardSpec
from modelyard.store.base import KeyLimits, UsageRecord
from modelyard.store.sqlite import SQLiteStore

ADMIN = "admin-" + "k" * 30
STATIC = "static-" + "k" * 30
HELLO = {"messages": [{"role": "user", "content": "hi"}]}
Client = httpx.AsyncClient


class Recorder:
    """An engine on loopback that keeps every body it gets and answers as told."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[dict[str, Any]] = []
        self.answer: tuple[int, bytes] = (200, orjson.dumps({"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Recorder:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        status, body = self.answer
        return web.Response(body=body, status=status, content_type="application/json")


def run(body: Callable[[Client, Recorder, str], Awaitable[None]], tmp_path: Path, engine: str = "openai") -> None:
    """`body(client, engine, a stored key's secret)` against a gateway with a static key, a stored key and the
    admin key, one model `m` whose one ready replica is the recorder."""
    async def go() -> None:
        store = await SQLiteStore.open(tmp_path / "modelyard.db")
        async with Recorder() as recorder:
            model: dict[str, Any] = {"name": "m", "engine": "openai", "urls": [f"http://127.0.0.1:{recorder.port}"]}
            if engine == "vllm":
                model = {"name": "m", "engine": "vllm", "model": {"path": str(tmp_path)}}
            spec = YardSpec.model_validate({"version": 1, "models": [model]})
            table = EndpointTable()
            table.add(Endpoint("m", 0, f"http://127.0.0.1:{recorder.port}", state=ReplicaState.READY))
            ring = KeyRing()
            ring.add_secret("static", STATIC)
            _, secret = await store.create_key("team-a", KeyLimits())
            app = create_gateway(spec, table, ring, store, admin_key=ADMIN)
            try:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                             base_url="http://gateway") as client:
                    client.store = store  # type: ignore[attr-defined]
                    await body(client, recorder, secret)
            finally:
                app.state.gateway.upstream.close()
                await store.close()
    asyncio.run(go())


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def error(reply: httpx.Response) -> dict[str, Any]:
    data: dict[str, Any] = reply.json()["error"]
    return data


def test_a_revoked_key_is_refused_on_every_route_from_the_next_request(tmp_path: Path) -> None:
    async def body(client: Client, recorder: Recorder, secret: str) -> None:
        assert (await client.get("/v1/models", headers=bearer(secret))).status_code == 200
        revoked = await client.delete("/admin/keys/team-a", headers=bearer(ADMIN))
        assert revoked.status_code == 200
        models = await client.get("/v1/models", headers=bearer(secret))  # was 200 on main
        assert models.status_code == 401 and error(models)["code"] == "invalid_api_key"
        chat = await client.post("/v1/chat/completions", headers=bearer(secret), json={"model": "m", **HELLO})
        assert chat.status_code == 401 and recorder.bodies == []
    run(body, tmp_path)


def test_two_authorization_headers_are_refused_on_every_route(tmp_path: Path) -> None:
    async def body(client: Client, recorder: Recorder, secret: str) -> None:
        twice = [("Authorization", f"Bearer {secret}"), ("Authorization", "Bearer someone-else")]
        for method, path in [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/admin/keys"),
                             ("GET", "/metrics"), ("GET", "/ui/state"), ("GET", "/health"), ("GET", "/nowhere")]:
            reply = await client.request(method, path, headers=twice, json={"model": "m", **HELLO})
            assert reply.status_code == 400 and error(reply)["code"] == "duplicate_header", (path, reply.text)
        assert recorder.bodies == []
    run(body, tmp_path)


def test_what_the_schema_refuses_never_reaches_the_engine(tmp_path: Path) -> None:
    async def body(client: Client, recorder: Recorder, secret: str) -> None:
        for payload, param in [({"messages": []}, "messages"), ({"messages": [{}]}, "messages[0].role"),
                               ({**HELLO, "temperature": "hot"}, "temperature"), ({**HELLO, "user": {}}, "user"),
                               ({"messages": [{"role": "user", "content": 123}]}, "messages[0].content")]:
            reply = await client.post("/v1/chat/completions", headers=bearer(secret), json={"model": "m", **payload})
            assert reply.status_code == 400 and error(reply)["param"] == param, reply.text
        raw = b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}], "model": "m"}'
        twice = await client.post("/v1/chat/completions", headers={**bearer(secret),
                                                                   "Content-Type": "application/json"}, content=raw)
        assert twice.status_code == 400 and error(twice) | {"message": ""} == {
            "message": "", "type": "invalid_request_error", "param": "model", "code": "duplicate_key"}
        deep = await client.post("/v1/chat/completions", headers=bearer(secret),
                                 json={"model": "m", **HELLO, "stream": True, "x": nested(300)})
        assert deep.status_code == 400 and error(deep)["code"] == "invalid_json"  # main: 500 (written again)
        assert recorder.bodies == []
        assert (await client.post("/v1/chat/completions", headers=bearer(secret),
                                  json={"model": "m", **HELLO})).status_code == 200
    run(body, tmp_path)


def test_a_trailing_slash_is_a_404_not_a_redirect_built_from_host(tmp_path: Path) -> None:
    async def body(client: Client, recorder: Recorder, secret: str) -> None:
        for method, path in [("POST", "/v1/chat/completions/"), ("GET", "/v1/models/"), ("GET", "/admin/keys/")]:
            reply = await client.request(method, path, headers={**bearer(secret), "Host": "evil.example"},
                                         json={"model": "m", **HELLO})
            assert reply.status_code in (404, 405) and "location" not in reply.headers, (path, reply.status_code)
            assert "error" in reply.json()
    run(body, tmp_path)


def test_an_engines_own_error_shape_becomes_openai_shaped_with_its_status(tmp_path: Path) -> None:
    async def body(client: Client, recorder: Recorder, secret: str) -> None:
        recorder.answer = (404, b'{"detail": "Not Found"}')
        reply = await client.post("/v1/chat/completions", headers=bearer(secret), json={"model": "m", **HELLO})
        assert reply.status_code == 404 and reply.json()["error"]["message"] == "Not Found"
        recorder.answer = (400, b'{"error": {"message": "too long", "type": "BadRequestError", "code": 400}}')
        kept = await client.post("/v1/chat/completions", headers=bearer(secret), json={"model": "m", **HELLO})
        assert kept.status_code == 400 and kept.json()["error"]["message"] == "too long"
    run(body, tmp_path)


def test_a_budget_429_says_when_to_ask_again_and_not_to_retry_at_once(tmp_path: Path) -> None:
    async def body(client: Client, recorder: Recorder, secret: str) -> None:
        store = client.store  # type: ignore[attr-defined]
        _, spent = await store.create_key("spent", KeyLimits(budget_tokens=10))
        await store.write_usage([UsageRecord(ts=time.time(), key_name="spent", model="m", prompt_tokens=10)])
        reply = await client.post("/v1/chat/completions", headers=bearer(spent), json={"model": "m", **HELLO})
        assert reply.status_code == 429 and error(reply)["code"] == "budget_exceeded"
        assert int(reply.headers["retry-after"]) > 0 and reply.headers["x-should-retry"] == "false"
    run(body, tmp_path)


def test_engines_that_salt_their_prefix_cache_get_one_salt_per_key_never_the_clients(tmp_path: Path) -> None:
    async def body(client: Client, recorder: Recorder, secret: str) -> None:
        await client.post("/v1/chat/completions", headers=bearer(secret), json={"model": "m", **HELLO})
        await client.post("/v1/chat/completions", headers=bearer(STATIC),
                          json={"model": "m", **HELLO, "cache_salt": cache_salt("team-a")})  # another's, guessed
        salts = [b.get("cache_salt") for b in recorder.bodies]
        assert salts == [cache_salt("team-a"), cache_salt("static")] and salts[0] != salts[1]
        assert secret not in str(recorder.bodies)
    run(body, tmp_path, engine="vllm")
