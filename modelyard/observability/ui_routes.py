"""The status page on the gateway's port: /ui (the page), /ui/login, /ui/logout, /ui/state (its JSON), /ui/assets.

Never open: it needs the admin key (or gateway.ui_key_env's), by a session cookie the login form sets or by
`Authorization: Bearer`; with neither key configured every /ui path answers 404 saying how to turn it on. The page,
its stylesheet and its script are files of this package (observability/ui/): nothing comes from anywhere else, and
the Content-Security-Policy lets the page load nothing but the gateway's own.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from modelyard.gateway.errors import openai_error
from modelyard.observability.ui_session import COOKIE, UiAuth
from modelyard.observability.ui_state import cluster_state, key_views

if TYPE_CHECKING:
    from modelyard.gateway.app import Gateway

UI_DIR = Path(__file__).parent / "ui"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
MAX_LOGIN_BYTES = 4096
KEYS_CACHE_S = 5.0  # the store is asked about keys at most this often, however many pages poll
MESSAGE_MARK = "<!--message-->"
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def off_message(admin_key_env: str) -> str:
    return (f"the status page is off: start the gateway with ${admin_key_env} set (the admin key), or name another "
            "environment variable holding a key for it in gateway.ui_key_env")


class StatusPage:
    def __init__(self, gateway: Gateway, admin_key: str | None, ui_key: str | None = None) -> None:
        self.gateway = gateway
        self.auth = UiAuth([admin_key, ui_key])
        self.files = {name: (UI_DIR / name).read_bytes() for name in ("index.html", "login.html", *ASSETS)}
        self._keys: tuple[float, list[dict[str, Any]]] = (0.0, [])

    def routes(self) -> list[Route]:
        return [
            Route("/ui", self.page, methods=["GET"]),
            Route("/ui/login", self.login_form, methods=["GET"]),
            Route("/ui/login", self.login, methods=["POST"]),
            Route("/ui/logout", self.logout, methods=["POST"]),
            Route("/ui/state", self.state, methods=["GET"]),
            Route("/ui/assets/{name}", self.asset, methods=["GET"]),
        ]

    def _off(self, page: bool) -> Response:
        message = off_message(self.gateway.spec.gateway.admin_key_env)
        if not page:
            return openai_error(404, message, "ui_disabled")
        body = f"<!doctype html><meta charset=utf-8><title>modelyard</title><p>{html.escape(message)}</p>"
        return HTMLResponse(body, status_code=404, headers=HEADERS)

    def _allowed(self, request: Request) -> bool:
        authorization = request.headers.get("authorization")
        if authorization is not None:
            return self.auth.bearer_ok(authorization)
        return self.auth.session_ok(request.cookies.get(COOKIE))

    def _login_page(self, message: str = "", status: int = 200) -> Response:
        text = self.files["login.html"].decode()
        if message:
            text = text.replace(MESSAGE_MARK, f'<p class="error" role="alert">{html.escape(message)}</p>')
        return HTMLResponse(text, status_code=status, headers=HEADERS)

    async def page(self, request: Request) -> Response:
        if not self.auth.enabled:
            return self._off(page=True)
        if not self._allowed(request):
            return RedirectResponse("/ui/login", status_code=303, headers=HEADERS)
        return Response(self.files["index.html"], media_type="text/html; charset=utf-8", headers=HEADERS)

    async def login_form(self, request: Request) -> Response:
        if not self.auth.enabled:
            return self._off(page=True)
        return self._login_page()

    async def login(self, request: Request) -> Response:
        if not self.auth.enabled:
            return self._off(page=True)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BYTES:
                return self._login_page("that is not a key", 413)
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        key = (fields.get("key") or [""])[0].strip()
        if not self.auth.key_ok(key):
            return self._login_page("wrong key: the status page needs the admin key (or the ui key)", 401)
        response = RedirectResponse("/ui", status_code=303, headers=HEADERS)
        response.set_cookie(COOKIE, self.auth.issue(), max_age=int(self.auth.session_s), path="/ui", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/ui/login", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
        return response

    async def state(self, request: Request) -> Response:
        if not self.auth.enabled:
            return self._off(page=False)
        if not self._allowed(request):
            if request.headers.get("authorization") is not None:
                return openai_error(401, "this needs the admin key (or the ui key)", "invalid_ui_key")
            return openai_error(401, "log in at /ui/login, or send the admin key as a bearer token",
                                "ui_login_required")
        body = cluster_state(self.gateway, await self._key_views())
        return Response(orjson.dumps(body), media_type="application/json", headers=HEADERS)

    async def _key_views(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        at, views = self._keys
        if at and now - at < KEYS_CACHE_S:
            return views
        try:
            views = await key_views(self.gateway.store, time.time())
        except Exception as exc:  # the store down: the page still shows the cluster
            views = [{"error": f"{type(exc).__name__}: {exc}"}]
        self._keys = (now, views)
        return views

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if not self.auth.enabled or name not in ASSETS:
            return openai_error(404, f"no such file: /ui/assets/{name}", "not_found")
        return Response(self.files[name], media_type=ASSETS[name], headers={**HEADERS, "Cache-Control": "no-cache"})
