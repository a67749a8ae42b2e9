"""modelyard/observability/ui_routes.py (and ui_state.py): /ui's auth and what /ui/state says, over HTTP to the
gateway's ASGI app in this process (no engine is needed: the endpoint table is filled by hand)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from modelyard.fleet.child_env import worker_env
from modelyard.gateway.app import Gateway
from modelyard.gateway.asgi import create_gateway
from modelyard.gateway.auth import KeyRing
from modelyard.observability.ui_session import COOKIE, UiAuth
from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState
from modelyard.spec.schema import YardSpec
from modelyard.store.base import KeyLimits, Store, UsageRecord
from modelyard.store.sqlite import SQLiteStore
from modelyard.up import worker_settings

ADMIN = "admin-" + "k" * 30
UI = "ui-" + "k" * 30
Client = httpx.AsyncClient


def spec() -> YardSpec:
    return YardSpec.model_validate({"version": 1, "models": [
        {"name": "chat", "engine": "simulator", "replicas": 2},
        {"name": "lazy", "engine": "simulator", "replicas": {"min": 0, "max": 2}}]})


def table() -> EndpointTable:
    endpoints = EndpointTable()
    endpoints.add(Endpoint("chat", 0, "http://127.0.0.1:9", state=ReplicaState.READY, in_flight=2, running=3,
                           waiting=1, kv_usage=0.25, scraped_at=1.0))
    endpoints.add(Endpoint("chat", 1, "http://127.0.0.1:9", state=ReplicaState.RESTARTING, restarts=2,
                           detail="probe failed: ConnectionRefusedError"))
    return endpoints


def run(body: Callable[[Client, Gateway], Awaitable[None]], admin_key: str | None = ADMIN,
        ui_key: str | None = None, store: Store | None = None) -> None:
    async def go() -> None:
        app = create_gateway(spec(), table(), KeyRing(), store, admin_key=admin_key, ui_key=ui_key)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            await body(client, app.state.gateway)
    asyncio.run(go())


def error_code(reply: httpx.Response) -> Any:
    return reply.json()["error"]["code"]


def test_without_any_key_the_page_is_off_and_says_how_to_turn_it_on() -> None:
    async def body(client: Client, gateway: Gateway) -> None:
        page = await client.get("/ui")
        assert page.status_code == 404 and "MODELYARD_ADMIN_KEY" in page.text and "ui_key_env" in page.text
        state = await client.get("/ui/state", headers={"Authorization": "Bearer anything"})
        assert state.status_code == 404 and error_code(state) == "ui_disabled"
        assert (await client.post("/ui/login", data={"key": ""})).status_code == 404
        assert (await client.get("/ui/assets/app.js")).status_code == 404
    run(body, admin_key=None)


def test_state_needs_a_session_or_the_admin_key_as_bearer() -> None:
    async def body(client: Client, gateway: Gateway) -> None:
        anonymous = await client.get("/ui/state")
        assert anonymous.status_code == 401 and error_code(anonymous) == "ui_login_required"
        assert anonymous.json()["error"]["type"] == "invalid_request_error"  # OpenAI-shaped
        wrong = await client.get("/ui/state", headers={"Authorization": "Bearer not-the-key"})
        assert wrong.status_code == 401 and error_code(wrong) == "invalid_ui_key"
        good = await client.get("/ui/state", headers={"Authorization": f"Bearer {ADMIN}"})
        assert good.status_code == 200 and good.headers["cache-control"] == "no-store"
        assert [m["name"] for m in good.json()["models"]] == ["chat", "lazy"]
    run(body)


def test_forged_foreign_and_expired_cookies_are_refused() -> None:
    async def body(client: Client, gateway: Gateway) -> None:
        now = time.time()
        genuine = UiAuth([ADMIN]).issue(now)
        expires, nonce, signature = genuine.split(".")
        for cookie in ("1.2.3", f"{int(expires) + 60}.{nonce}.{signature}", UiAuth(["other"]).issue(now),
                       UiAuth([ADMIN]).issue(now - 13 * 3600), ADMIN):
            reply = await client.get("/ui/state", headers={"Cookie": f"{COOKIE}={cookie}"})
            assert reply.status_code == 401 and error_code(reply) == "ui_login_required", cookie
        assert (await client.get("/ui/state", headers={"Cookie": f"{COOKIE}={genuine}"})).status_code == 200
    run(body)


def test_login_sets_a_strict_http_only_signed_cookie_and_a_wrong_key_is_refused() -> None:
    async def body(client: Client, gateway: Gateway) -> None:
        page = await client.get("/ui")
        assert page.status_code == 303 and page.headers["location"] == "/ui/login"
        form = await client.get("/ui/login")
        assert form.status_code == 200 and 'action="/ui/login"' in form.text
        refused = await client.post("/ui/login", data={"key": "guess"})
        assert refused.status_code == 401 and "wrong key" in refused.text and "set-cookie" not in refused.headers
        accepted = await client.post("/ui/login", data={"key": ADMIN})
        assert accepted.status_code == 303 and accepted.headers["location"] == "/ui"
        cookie = accepted.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=") and ADMIN not in cookie
        attributes = {part.strip().lower() for part in cookie.split(";")}
        assert {"httponly", "samesite=strict", "path=/ui"} <= attributes
        value = cookie.split(";")[0].split("=", 1)[1]
        headers = {"Cookie": f"{COOKIE}={value}"}
        shown = await client.get("/ui", headers=headers)
        assert shown.status_code == 200 and "/ui/assets/app.js" in shown.text
        assert "default-src 'none'" in shown.headers["content-security-policy"]
        assert (await client.get("/ui/state", headers=headers)).status_code == 200
        out = await client.post("/ui/logout", headers=headers)
        assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]
    run(body)


def test_a_ui_key_of_its_own_opens_the_page_but_not_the_admin_api() -> None:
    async def body(client: Client, gateway: Gateway) -> None:
        assert (await client.post("/ui/login", data={"key": UI})).status_code == 303
        assert (await client.get("/ui/state", headers={"Authorization": f"Bearer {UI}"})).status_code == 200
        admin = await client.get("/admin/keys", headers={"Authorization": f"Bearer {UI}"})
        assert admin.status_code == 403  # the admin API is still off: no admin key
    run(body, admin_key=None, ui_key=UI)


def test_assets_are_the_packages_own_files() -> None:
    async def body(client: Client, gateway: Gateway) -> None:
        script = await client.get("/ui/assets/app.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert "/ui/state" in script.text and "http" not in script.text.replace("http://www.w3.org/2000/svg", "")
        assert (await client.get("/ui/assets/app.css")).headers["content-type"].startswith("text/css")
        assert (await client.get("/ui/assets/index.html")).status_code == 404
        assert (await client.get("/ui/assets/..%2Fui_routes.py")).status_code == 404
    run(body)


def test_state_shows_replicas_desired_recent_traffic_and_keys_near_their_limits(tmp_path: Path) -> None:
    async def body(client: Client, gateway: Gateway) -> None:
        gateway.fleet = {"chat": {"desired": 2, "strategy": "fixed", "events": {}},
                         "lazy": {"desired": 0, "strategy": "autoscaled", "events": {"scale": 2}}}
        now = time.perf_counter()
        for _ in range(10):
            gateway.recent.record("chat", now, ttft_s=0.05, e2e_s=0.4, tokens=8, status=200, error=None)
        gateway.recent.record("chat", now, ttft_s=None, e2e_s=30.0, tokens=0, status=504, error="timeout")
        state = (await client.get("/ui/state", headers={"Authorization": f"Bearer {ADMIN}"})).json()
        assert state["status"] == "ok"
        chat, lazy = state["models"]
        assert (chat["ready"], chat["desired"], chat["states"]) == (1, 2, {"ready": 1, "restarting": 1})
        first, second = chat["replicas"]
        assert (first["id"], first["state"], first["in_flight"], first["running"], first["waiting"]) == (
            "chat/0", "ready", 2, 3, 1)
        assert first["kv_usage"] == 0.25 and first["scraped"]
        assert (second["state"], second["restarts"], second["detail"]) == (
            "restarting", 2, "probe failed: ConnectionRefusedError")
        assert 0.04 <= chat["recent"]["ttft_p50_s"] <= 0.0625 and chat["recent"]["errors"] == {"timeout": 1}
        assert (lazy["strategy"], lazy["desired"], lazy["replicas"], lazy["decisions"]) == (
            "autoscaled", 0, [], {"scale": 2})
        near = [k["name"] for k in state["keys"] if k["near"]]
        assert near == ["spent"] and {k["name"] for k in state["keys"]} == {"spent", "roomy"}

    async def with_store() -> Store:
        store = await SQLiteStore.open(tmp_path / "modelyard.db")
        await store.create_key("spent", KeyLimits(budget_tokens=100))
        await store.create_key("roomy", KeyLimits(rpm=1000))
        await store.create_key("free", KeyLimits())  # no limit: not listed
        await store.write_usage([UsageRecord(ts=time.time(), key_name="spent", model="chat", prompt_tokens=50,
                                             completion_tokens=40)])
        return store

    store = asyncio.run(with_store())
    try:
        run(body, store=store)
    finally:
        asyncio.run(store.close())


def test_the_ui_key_reaches_the_workers_over_stdin_never_through_their_environment(
        tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("MY_UI_KEY", UI)
    yard = YardSpec.model_validate({"version": 1, "gateway": {"ui_key_env": "MY_UI_KEY"},
                                    "models": [{"name": "chat", "engine": "simulator"}]})
    settings = worker_settings(yard, KeyRing(), tmp_path, None, 1, tmp_path)
    assert settings["ui_key"] == UI
    assert "MY_UI_KEY" not in worker_env(yard, {})
    assert worker_settings(spec(), KeyRing(), tmp_path, None, 1, tmp_path)["ui_key"] is None
