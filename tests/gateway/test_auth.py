from __future__ import annotations

from modelyard.gateway.auth import KeyRing, hash_key, new_key


def test_known_key_authenticates_by_name() -> None:
    ring = KeyRing()
    secret = new_key()
    ring.add_secret("team-a", secret)
    ring.add_hash("team-b", hash_key("other"))
    principal = ring.authenticate(f"Bearer {secret}")
    assert principal is not None and principal.name == "team-a"
    assert ring.authenticate("bearer other") is not None


def test_wrong_missing_and_malformed_headers() -> None:
    ring = KeyRing()
    ring.add_secret("a", "s3cret")
    for header in (None, "", "Bearer", "Bearer ", "Basic s3cret", "s3cret", "Bearer s3cret2", "Bearer ' OR 1=1 --"):
        assert ring.authenticate(header) is None


def test_secrets_are_not_kept() -> None:
    ring = KeyRing()
    ring.add_secret("a", "s3cret")
    assert "s3cret" not in repr(ring.__dict__)
