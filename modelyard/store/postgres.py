"""The shared store: PostgreSQL through asyncpg, for several gateway instances.

asyncpg sends every value as a bound parameter of a prepared statement (the extended protocol), never spliced
into SQL text, and caches the statements, so the per-request key lookup is one indexed, prepared query.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg

from modelyard.gateway.auth import hash_key, new_key
from modelyard.store import migrations
from modelyard.store.base import (
    KEY_COLUMNS,
    USAGE_COLUMNS,
    USAGE_WIDTH,
    GroupBy,
    KeyLimits,
    KeyRecord,
    StoreError,
    UsageRecord,
    UsageRow,
    encode_models,
    key_from_row,
    report_sql,
    tokens_by_key,
    usage_row,
    usage_values,
)
from modelyard.store.revisions import REVISION_COLUMNS, Revision, revision_from_row, revision_id

MIGRATION_LOCK = 0x6D6F64656C  # pg_advisory_xact_lock id: "model"


class PostgresStore:
    """Open with `await PostgresStore.open(url)`; `await close()` when done."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str, min_size: int = 1, max_size: int = 10) -> PostgresStore:
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size)
        store = cls(pool)
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _migrate(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(migrations.SCHEMA_VERSION_DDL)
            current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            for step in migrations.pending(int(current)):
                for statement in step.statements("postgres"):
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version, description, applied_at) "
                                   "VALUES ($1, $2, $3)", step.version, step.description, time.time())

    async def schema_version(self) -> int:
        return int(await self._pool.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))

    async def lookup_key(self, key_hash: str) -> KeyRecord | None:
        row = await self._pool.fetchrow(f"SELECT {KEY_COLUMNS} FROM keys WHERE key_hash = $1", key_hash)
        return key_from_row(tuple(row)) if row else None

    async def get_key(self, name: str) -> KeyRecord | None:
        row = await self._pool.fetchrow(f"SELECT {KEY_COLUMNS} FROM keys WHERE name = $1", name)
        return key_from_row(tuple(row)) if row else None

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self._pool.fetch(f"SELECT {KEY_COLUMNS} FROM keys ORDER BY name")
        return [key_from_row(tuple(r)) for r in rows]

    async def create_key(self, name: str, limits: KeyLimits) -> tuple[KeyRecord, str]:
        secret = new_key()
        record = KeyRecord(name=name, key_hash=hash_key(secret), models=limits.models, rpm=limits.rpm,
                           tpm=limits.tpm, max_concurrency=limits.max_concurrency,
                           budget_tokens=limits.budget_tokens, priority=limits.priority,
                           expires_at=limits.expires_at, created_at=time.time())
        try:
            await self._pool.execute(
                f"INSERT INTO keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                record.name, record.key_hash, encode_models(record.models), record.rpm, record.tpm,
                record.max_concurrency, record.budget_tokens, 0, record.priority, record.expires_at, None,
                record.created_at)
        except asyncpg.UniqueViolationError as exc:
            raise StoreError(f"a key named {name!r} already exists") from exc
        return record, secret

    async def revoke_key(self, name: str) -> KeyRecord:
        row = await self._pool.fetchrow(
            f"UPDATE keys SET revoked_at = COALESCE(revoked_at, $1) WHERE name = $2 RETURNING {KEY_COLUMNS}",
            time.time(), name)
        if row is None:
            raise StoreError(f"no key named {name!r}")
        return key_from_row(tuple(row))

    async def rotate_key(self, name: str) -> tuple[KeyRecord, str]:
        secret = new_key()
        row = await self._pool.fetchrow(
            f"UPDATE keys SET key_hash = $1 WHERE name = $2 AND revoked_at IS NULL RETURNING {KEY_COLUMNS}",
            hash_key(secret), name)
        if row is None:
            raise StoreError(f"no active key named {name!r}")
        return key_from_row(tuple(row)), secret

    async def write_usage(self, batch: Sequence[UsageRecord]) -> None:
        if not batch:
            return
        rows = [usage_values(r) for r in batch]
        totals = sorted(tokens_by_key(batch).items())  # a fixed order: concurrent writers never deadlock
        async with self._pool.acquire() as conn, conn.transaction():
            places = ", ".join(f"${i}" for i in range(1, USAGE_WIDTH + 1))
            await conn.executemany(f"INSERT INTO usage ({USAGE_COLUMNS}) VALUES ({places})", rows)
            await conn.executemany("UPDATE keys SET used_tokens = used_tokens + $1 WHERE name = $2",
                                   [(n, name) for name, n in totals])

    async def add_used_tokens(self, name: str, tokens: int) -> None:
        await self._pool.execute("UPDATE keys SET used_tokens = used_tokens + $1 WHERE name = $2", tokens, name)

    async def usage_report(self, by: GroupBy, since: float) -> list[UsageRow]:
        rows = await self._pool.fetch(report_sql(by, "$1"), since)
        return [usage_row(tuple(r)) for r in rows]

    async def purge_usage(self, before: float) -> int:
        result = await self._pool.execute("DELETE FROM usage WHERE ts < $1", before)
        return int(str(result).rsplit(" ", 1)[-1])

    async def add_revision(self, spec: str, author: str, message: str, state: str, gate: str = "") -> Revision:
        async with self._pool.acquire() as conn, conn.transaction():
            if state == "serving":
                await conn.execute("UPDATE revisions SET state = 'superseded' WHERE state = 'serving'")
            row = await conn.fetchrow("INSERT INTO revisions (id, created_at, author, message, spec, state, gate) "
                                      f"VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {REVISION_COLUMNS}",
                                      revision_id(spec), time.time(), author, message, spec, state, gate)
        return revision_from_row(tuple(row))

    async def list_revisions(self, limit: int = 50) -> list[Revision]:
        rows = await self._pool.fetch(f"SELECT {REVISION_COLUMNS} FROM revisions ORDER BY seq DESC LIMIT $1", limit)
        return [revision_from_row(tuple(r)) for r in rows]

    async def get_revision(self, ref: str) -> Revision | None:
        row = await self._pool.fetchrow(f"SELECT {REVISION_COLUMNS} FROM revisions WHERE seq = $1 OR id LIKE $2 "
                                        "ORDER BY seq DESC LIMIT 1", int(ref) if ref.isdigit() else -1, f"{ref}%")
        return revision_from_row(tuple(row)) if row else None

    async def close(self) -> None:
        await self._pool.close()
