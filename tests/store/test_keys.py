"""modelyard/store: keys, against real SQLite and real PostgreSQL."""

from __future__ import annotations

import time

import pytest

from modelyard.gateway.auth import hash_key
from modelyard.store.base import KeyLimits, Store, StoreError, check_key
from tests.store.helpers import with_store


def test_create_then_lookup_by_hash_only(store_url: str) -> None:
    async def body(store: Store) -> None:
        limits = KeyLimits(models=("chat", "coder"), rpm=60, tpm=200_000, max_concurrency=8,
                           budget_tokens=5_000_000, priority="batch")
        record, secret = await store.create_key("team-a", limits)
        assert record.key_hash == hash_key(secret) and secret not in repr(record)
        found = await store.lookup_key(hash_key(secret))
        assert found is not None
        assert (found.name, found.models, found.rpm, found.tpm, found.max_concurrency, found.budget_tokens,
                found.priority, found.used_tokens) == ("team-a", ("chat", "coder"), 60, 200_000, 8, 5_000_000,
                                                       "batch", 0)
        assert await store.lookup_key(hash_key(secret + "x")) is None
        assert check_key(found, "chat") is None
        keys = await store.list_keys()
        assert [k.name for k in keys] == ["team-a"]
    with_store(store_url, body)


def test_secret_is_never_stored(store_url: str, tmp_path: object) -> None:
    async def body(store: Store) -> str:
        _, secret = await store.create_key("team-a", KeyLimits())
        return secret
    secret = with_store(store_url, body)
    if store_url.startswith("sqlite:///"):
        path = store_url.removeprefix("sqlite:///")
        for suffix in ("", "-wal"):
            try:
                with open(path + suffix, "rb") as f:
                    assert secret.encode() not in f.read()
            except FileNotFoundError:
                pass


def test_duplicate_name_is_refused(store_url: str) -> None:
    async def body(store: Store) -> None:
        await store.create_key("team-a", KeyLimits())
        with pytest.raises(StoreError, match="already exists"):
            await store.create_key("team-a", KeyLimits())
    with_store(store_url, body)


def test_revoke_takes_effect_on_the_next_lookup_from_another_connection(store_url: str) -> None:
    async def create(store: Store) -> str:
        return (await store.create_key("team-a", KeyLimits()))[1]
    secret = with_store(store_url, create)

    async def gateway_view(store: Store) -> None:
        before = await store.lookup_key(hash_key(secret))
        assert check_key(before, "chat") is None

        async def revoke(other: Store) -> None:  # another process's connection (the CLI, another gateway)
            await other.revoke_key("team-a")
        from tests.store.helpers import opened
        async with opened(store_url) as other:
            await revoke(other)
        after = await store.lookup_key(hash_key(secret))
        denial = check_key(after, "chat")
        assert denial is not None and denial.status == 401 and "revoked" in denial.message
    with_store(store_url, gateway_view)


def test_rotate_replaces_the_secret_at_once(store_url: str) -> None:
    async def body(store: Store) -> None:
        record, old = await store.create_key("team-a", KeyLimits(rpm=5))
        rotated, new = await store.rotate_key("team-a")
        assert new != old and rotated.rpm == 5 and rotated.created_at == pytest.approx(record.created_at)
        assert await store.lookup_key(hash_key(old)) is None
        found = await store.lookup_key(hash_key(new))
        assert found is not None and found.name == "team-a"
        await store.revoke_key("team-a")
        with pytest.raises(StoreError):
            await store.rotate_key("team-a")
        with pytest.raises(StoreError):
            await store.revoke_key("nobody")
    with_store(store_url, body)


def test_expired_key_is_denied(store_url: str) -> None:
    async def body(store: Store) -> None:
        _, secret = await store.create_key("old", KeyLimits(expires_at=time.time() - 1))
        _, fresh = await store.create_key("new", KeyLimits(expires_at=time.time() + 3600))
        denial = check_key(await store.lookup_key(hash_key(secret)), "chat")
        assert denial is not None and denial.status == 401 and "expired" in denial.message
        assert check_key(await store.lookup_key(hash_key(fresh)), "chat") is None
    with_store(store_url, body)


def test_model_not_allowed(store_url: str) -> None:
    async def body(store: Store) -> None:
        _, secret = await store.create_key("team-a", KeyLimits(models=("chat",)))
        key = await store.lookup_key(hash_key(secret))
        assert check_key(key, "chat") is None
        denial = check_key(key, "coder")
        assert denial is not None and denial.status == 403 and denial.code == "model_not_allowed"
    with_store(store_url, body)


def test_budget_exhaustion(store_url: str) -> None:
    async def body(store: Store) -> None:
        _, secret = await store.create_key("team-a", KeyLimits(budget_tokens=1000))
        await store.add_used_tokens("team-a", 999)
        assert check_key(await store.lookup_key(hash_key(secret)), "chat") is None
        await store.add_used_tokens("team-a", 1)
        denial = check_key(await store.lookup_key(hash_key(secret)), "chat")
        assert denial is not None and denial.status == 429 and denial.code == "budget_exceeded"
    with_store(store_url, body)


INJECTIONS = ["x'); DROP TABLE keys;--", "x\"; DROP TABLE usage; --", "' OR '1'='1", "a'||(SELECT 1)||'",
              "名前 \\' ; --", "$1", "?"]


@pytest.mark.parametrize("name", INJECTIONS)
def test_injection_in_names_is_stored_verbatim(store_url: str, name: str) -> None:
    async def body(store: Store) -> None:
        _, secret = await store.create_key(name, KeyLimits(models=(name,)))
        await store.create_key("other", KeyLimits())
        found = await store.lookup_key(hash_key(secret))
        assert found is not None and found.name == name and found.models == (name,)
        assert sorted(k.name for k in await store.list_keys()) == sorted([name, "other"])
        assert (await store.get_key(name)) == found
        await store.revoke_key(name)
        assert (await store.get_key("other")) is not None and (await store.get_key("other")).revoked_at is None  # type: ignore[union-attr]
    with_store(store_url, body)


@pytest.mark.parametrize("secret", ["' OR '1'='1", "x'); DROP TABLE keys;--", "' OR 1=1 --"])
def test_injection_in_secrets_finds_nothing(store_url: str, secret: str) -> None:
    async def body(store: Store) -> None:
        await store.create_key("team-a", KeyLimits())
        assert await store.lookup_key(hash_key(secret)) is None
        assert await store.lookup_key(secret) is None  # even a raw value given as the hash is only compared
        assert [k.name for k in await store.list_keys()] == ["team-a"]
    with_store(store_url, body)
