"""modelyard/gateway/tenancy.py: the key cache stays exact across processes (SQLite's data_version)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from modelyard.gateway.auth import hash_key
from modelyard.gateway.tenancy import KeyCache
from modelyard.store.base import KeyLimits, KeyRecord, check_key
from modelyard.store.sqlite import SQLiteStore


class CountingStore(SQLiteStore):
    lookups = 0  # reads of the store, synchronous or not
    busy = False  # the synchronous read fails as SQLite's does when the database is busy

    async def lookup_key(self, key_hash: str) -> KeyRecord | None:
        self.lookups += 1
        return await super().lookup_key(key_hash)

    def lookup_key_now(self, key_hash: str) -> KeyRecord | None:
        if self.busy:
            raise sqlite3.OperationalError("database is locked")
        self.lookups += 1
        return super().lookup_key_now(key_hash)


def test_a_known_key_is_served_from_memory_until_any_connection_writes(tmp_path: Path) -> None:
    async def body() -> None:
        path = tmp_path / "modelyard.db"
        base = await SQLiteStore.open(path)
        store = CountingStore(base.path, base._executor, base._conn)
        other = await SQLiteStore.open(path)  # another process's connection (the CLI, another gateway)
        try:
            _, secret = await other.create_key("team-a", KeyLimits(rpm=5))
            cache = KeyCache(store)
            digest = hash_key(secret)
            first, second = await cache.lookup(digest), await cache.lookup(digest)
            assert first is not None and first == second and store.lookups == 1
            assert await cache.lookup(hash_key("unknown")) is None
            assert await cache.lookup(hash_key("unknown")) is None and store.lookups == 3  # never remembered
            await other.revoke_key("team-a")
            denial = check_key(await cache.lookup(digest), "chat")  # the very next lookup sees the revocation
            assert denial is not None and denial.status == 401 and store.lookups == 4
        finally:
            await other.close()
            await store.close()
    asyncio.run(body())


class BusyStore:
    """A store that cannot tell its version now (SQLite busy) but answers lookups."""

    def __init__(self) -> None:
        self.lookups = 0

    def data_version(self) -> int:
        raise sqlite3.OperationalError("database is locked")

    async def lookup_key(self, key_hash: str) -> KeyRecord | None:
        self.lookups += 1
        return KeyRecord(name="team-a", key_hash=key_hash)


def test_a_store_that_cannot_tell_its_version_is_asked_every_time() -> None:
    async def body() -> None:
        store = BusyStore()
        cache = KeyCache(store)  # type: ignore[arg-type]
        for _ in range(3):
            assert (await cache.lookup("h")) is not None
        assert store.lookups == 3
    asyncio.run(body())


def test_requests_that_miss_at_once_share_one_lookup(tmp_path: Path) -> None:
    async def body() -> None:
        base = await SQLiteStore.open(tmp_path / "modelyard.db")
        store = CountingStore(base.path, base._executor, base._conn)
        store.busy = True  # through the store's thread, as when the synchronous read cannot be made
        try:
            _, secret = await store.create_key("team-a", KeyLimits(rpm=5))
            cache = KeyCache(store)
            keys = await asyncio.gather(*(cache.lookup(hash_key(secret)) for _ in range(20)))
            assert all(k is not None and k.name == "team-a" for k in keys) and store.lookups == 1
            await store.revoke_key("team-a")  # a write: the next ones ask again, once
            keys = await asyncio.gather(*(cache.lookup(hash_key(secret)) for _ in range(20)))
            assert all(k is not None and k.revoked_at is not None for k in keys) and store.lookups == 2
        finally:
            await store.close()
    asyncio.run(body())


def test_a_write_is_seen_from_the_next_loop_turn_on(tmp_path: Path) -> None:
    async def body() -> None:
        path = tmp_path / "modelyard.db"
        base = await SQLiteStore.open(path)
        store = CountingStore(base.path, base._executor, base._conn)
        try:
            _, secret = await store.create_key("team-a", KeyLimits(rpm=5))
            cache = KeyCache(store)
            digest = hash_key(secret)
            assert (await cache.lookup(digest)) is not None
            with sqlite3.connect(path) as other:  # a revocation committed in the middle of a loop turn
                other.execute("UPDATE keys SET revoked_at = 1 WHERE name = 'team-a'")
            same_turn = await cache.lookup(digest)  # no await yielded to the loop: the version read this turn
            assert same_turn is not None and same_turn.revoked_at is None
            await asyncio.sleep(0)
            next_turn = await cache.lookup(digest)
            assert next_turn is not None and next_turn.revoked_at is not None
        finally:
            await store.close()
    asyncio.run(body())
