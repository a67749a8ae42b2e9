"""modelyard/observability/ui_session.py: the status page's keys and signed session cookies."""

from __future__ import annotations

import time

import pytest

from modelyard.observability.ui_session import SESSION_S, UiAuth

ADMIN = "admin-" + "a" * 30
UI = "ui-" + "u" * 30


def test_either_configured_key_is_accepted_and_nothing_else() -> None:
    auth = UiAuth([ADMIN, UI])
    assert auth.enabled and auth.key_ok(ADMIN) and auth.key_ok(UI)
    assert not auth.key_ok("wrong") and not auth.key_ok("") and not auth.key_ok(None)
    assert auth.bearer_ok(f"Bearer {ADMIN}") and not auth.bearer_ok(ADMIN) and not auth.bearer_ok("Bearer nope")


def test_no_key_configured_means_off() -> None:
    auth = UiAuth([None, ""])
    assert not auth.enabled and not auth.key_ok("") and not auth.session_ok("1.2.3")
    with pytest.raises(ValueError):
        auth.issue()


def test_a_session_is_signed_holds_no_key_and_expires() -> None:
    auth = UiAuth([ADMIN])
    now = time.time()
    cookie = auth.issue(now)
    assert ADMIN not in cookie and auth.session_ok(cookie, now)
    assert UiAuth([ADMIN]).session_ok(cookie, now)  # another worker, the same key: the same signing secret
    assert not auth.session_ok(cookie, now + SESSION_S + 1)
    assert auth.issue(now) != cookie  # a nonce each


def test_forged_tampered_or_foreign_sessions_are_refused() -> None:
    auth = UiAuth([ADMIN])
    now = time.time()
    expires, nonce, signature = auth.issue(now).split(".")
    assert not auth.session_ok(f"{int(expires) + 3600}.{nonce}.{signature}", now)  # a later expiry, same signature
    assert not auth.session_ok(f"{expires}.{nonce}.{signature[:-2]}AA", now)
    assert not auth.session_ok(f"{expires}.{nonce}", now)
    assert not auth.session_ok("garbage", now) and not auth.session_ok("", now)
    assert not auth.session_ok(UiAuth(["another key"]).issue(now), now)  # signed with another key
    assert not UiAuth([UI]).session_ok(auth.issue(now), now)  # the key changed: old sessions end
    far = UiAuth([ADMIN], session_s=10 * SESSION_S).issue(now)
    assert not auth.session_ok(far, now)  # valid signature, but longer than a session may last
