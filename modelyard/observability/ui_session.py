"""Who may see the status page: the holder of the admin key (or of the status page's own key, gateway.ui_key_env),
by a bearer header or by a session cookie that the login form sets.

The cookie holds `<expires>.<nonce>.<signature>`: an HMAC-SHA256 over the expiry and nonce, keyed by a secret
derived from the configured keys' sha256 (never a key itself), so every gateway worker checks the sessions of its
siblings without sharing any state, and changing a key ends the sessions made with the old one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence

from modelyard.gateway.auth import Credentials

COOKIE = "modelyard_ui"
SESSION_S = 12 * 3600
SIGNING_CONTEXT = b"modelyard-ui-session-v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class UiAuth(Credentials):
    def __init__(self, keys: Sequence[str | None], session_s: float = SESSION_S) -> None:
        super().__init__(keys)
        self.session_s = session_s
        material = "".join(self.hashes).encode()
        self._signing = hmac.new(material, SIGNING_CONTEXT, hashlib.sha256).digest() if self.hashes else b""

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._signing, payload.encode(), hashlib.sha256).digest())

    def issue(self, now: float | None = None) -> str:
        """A new session's cookie value."""
        if not self.enabled:
            raise ValueError("no key is configured for the status page")
        expires = int((time.time() if now is None else now) + self.session_s)
        payload = f"{expires}.{secrets.token_urlsafe(12)}"
        return f"{payload}.{self._sign(payload)}"

    def session_ok(self, cookie: str | None, now: float | None = None) -> bool:
        if not cookie or not self.enabled or len(cookie) > 256:
            return False
        payload, _, signature = cookie.rpartition(".")
        expires, _, nonce = payload.partition(".")
        if not nonce or not hmac.compare_digest(self._sign(payload), signature):
            return False
        try:
            at = int(expires)
        except ValueError:
            return False
        now = time.time() if now is None else now
        return now < at <= now + self.session_s
