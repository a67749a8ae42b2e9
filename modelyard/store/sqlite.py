"""The default store: one SQLite file (WAL mode), driven from one worker thread so the event loop never blocks.

Several processes (the gateway, `modelyard keys ...`) may open the same file: WAL lets readers run beside the
one writer, and `busy_timeout` makes a writer wait for the other instead of failing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

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

T = TypeVar("T")


class SQLiteStore:
    """Open with `await SQLiteStore.open(path)`; `await close()` when done."""

    def __init__(self, path: Path, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self.path, self._executor, self._conn = path, executor, conn
        self._watch: sqlite3.Connection | None = None

    def _watcher(self) -> sqlite3.Connection:
        if self._watch is None:  # a connection of its own, which never writes: every commit is another's
            # timeout 0: never sleeps on the event loop; a busy database raises, and the caller asks the store
            self._watch = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        return self._watch

    def data_version(self) -> int:
        """A number that changes whenever a commit lands in the database, from this process or any other: a cache
        of keys stays exact by dropping itself when it changes. Synchronous and cheap (WAL readers never wait)."""
        row = self._watcher().execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def lookup_key_now(self, key_hash: str) -> KeyRecord | None:
        """`lookup_key`, synchronously, on the same read-only connection: one indexed read of a few microseconds,
        which never waits behind the store's thread (busy writing usage) and never sleeps; raises when busy."""
        row = self._watcher().execute(f"SELECT {KEY_COLUMNS} FROM keys WHERE key_hash = ?", (key_hash,)).fetchone()
        return key_from_row(row) if row else None

    @classmethod
    async def open(cls, path: str | Path) -> SQLiteStore:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelyard-sqlite")
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(executor, _connect, path)
        store = cls(path, executor, conn)
        await store._run(_migrate)
        return store

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._conn)

    async def lookup_key(self, key_hash: str) -> KeyRecord | None:
        def q(c: sqlite3.Connection) -> KeyRecord | None:
            row = c.execute(f"SELECT {KEY_COLUMNS} FROM keys WHERE key_hash = ?", (key_hash,)).fetchone()
            return key_from_row(row) if row else None
        return await self._run(q)

    async def get_key(self, name: str) -> KeyRecord | None:
        def q(c: sqlite3.Connection) -> KeyRecord | None:
            row = c.execute(f"SELECT {KEY_COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()
            return key_from_row(row) if row else None
        return await self._run(q)

    async def list_keys(self) -> list[KeyRecord]:
        def q(c: sqlite3.Connection) -> list[KeyRecord]:
            return [key_from_row(r) for r in c.execute(f"SELECT {KEY_COLUMNS} FROM keys ORDER BY name")]
        return await self._run(q)

    async def create_key(self, name: str, limits: KeyLimits) -> tuple[KeyRecord, str]:
        secret = new_key()
        record = KeyRecord(name=name, key_hash=hash_key(secret), models=limits.models, rpm=limits.rpm,
                           tpm=limits.tpm, max_concurrency=limits.max_concurrency,
                           budget_tokens=limits.budget_tokens, priority=limits.priority,
                           expires_at=limits.expires_at, created_at=time.time())

        def q(c: sqlite3.Connection) -> None:
            try:
                with c:
                    c.execute(f"INSERT INTO keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (record.name, record.key_hash, encode_models(record.models), record.rpm, record.tpm,
                               record.max_concurrency, record.budget_tokens, 0, record.priority,
                               record.expires_at, None, record.created_at))
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"a key named {name!r} already exists") from exc
        await self._run(q)
        return record, secret

    async def revoke_key(self, name: str) -> KeyRecord:
        def q(c: sqlite3.Connection) -> None:
            with c:
                cur = c.execute("UPDATE keys SET revoked_at = COALESCE(revoked_at, ?) WHERE name = ?",
                                (time.time(), name))
            if cur.rowcount == 0:
                raise StoreError(f"no key named {name!r}")
        await self._run(q)
        return await self._must_get(name)

    async def rotate_key(self, name: str) -> tuple[KeyRecord, str]:
        secret = new_key()

        def q(c: sqlite3.Connection) -> None:
            with c:
                cur = c.execute("UPDATE keys SET key_hash = ? WHERE name = ? AND revoked_at IS NULL",
                                (hash_key(secret), name))
            if cur.rowcount == 0:
                raise StoreError(f"no active key named {name!r}")
        await self._run(q)
        return await self._must_get(name), secret

    async def _must_get(self, name: str) -> KeyRecord:
        record = await self.get_key(name)
        if record is None:
            raise StoreError(f"no key named {name!r}")
        return record

    async def write_usage(self, batch: Sequence[UsageRecord]) -> None:
        if not batch:
            return
        rows = [usage_values(r) for r in batch]
        totals = list(tokens_by_key(batch).items())

        def q(c: sqlite3.Connection) -> None:
            with c:
                c.executemany(f"INSERT INTO usage ({USAGE_COLUMNS}) VALUES ({', '.join('?' * USAGE_WIDTH)})", rows)
                c.executemany("UPDATE keys SET used_tokens = used_tokens + ? WHERE name = ?",
                              [(n, name) for name, n in totals])
        await self._run(q)

    async def add_used_tokens(self, name: str, tokens: int) -> None:
        def q(c: sqlite3.Connection) -> None:
            with c:
                c.execute("UPDATE keys SET used_tokens = used_tokens + ? WHERE name = ?", (tokens, name))
        await self._run(q)

    async def usage_report(self, by: GroupBy, since: float) -> list[UsageRow]:
        sql = report_sql(by, "?")

        def q(c: sqlite3.Connection) -> list[UsageRow]:
            return [usage_row(r) for r in c.execute(sql, (since,))]
        return await self._run(q)

    async def purge_usage(self, before: float) -> int:
        def q(c: sqlite3.Connection) -> int:
            with c:
                return c.execute("DELETE FROM usage WHERE ts < ?", (before,)).rowcount
        return await self._run(q)

    async def add_revision(self, spec: str, author: str, message: str, state: str, gate: str = "") -> Revision:
        def q(c: sqlite3.Connection) -> Revision:
            with c:
                if state == "serving":
                    c.execute("UPDATE revisions SET state = 'superseded' WHERE state = 'serving'")
                cursor = c.execute("INSERT INTO revisions (id, created_at, author, message, spec, state, gate) "
                                   "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                   (revision_id(spec), time.time(), author, message, spec, state, gate))
                row = c.execute(f"SELECT {REVISION_COLUMNS} FROM revisions WHERE seq = ?",
                                (cursor.lastrowid,)).fetchone()
            return revision_from_row(row)
        return await self._run(q)

    async def list_revisions(self, limit: int = 50) -> list[Revision]:
        def q(c: sqlite3.Connection) -> list[Revision]:
            rows = c.execute(f"SELECT {REVISION_COLUMNS} FROM revisions ORDER BY seq DESC LIMIT ?", (limit,))
            return [revision_from_row(r) for r in rows]
        return await self._run(q)

    async def get_revision(self, ref: str) -> Revision | None:
        def q(c: sqlite3.Connection) -> Revision | None:
            row = c.execute(f"SELECT {REVISION_COLUMNS} FROM revisions WHERE seq = ? OR id LIKE ? "
                            "ORDER BY seq DESC LIMIT 1", (int(ref) if ref.isdigit() else -1, f"{ref}%")).fetchone()
            return revision_from_row(row) if row else None
        return await self._run(q)

    async def schema_version(self) -> int:
        return await self._run(_current_version)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        await self._run(lambda c: c.close())
        self._executor.shutdown(wait=True)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def _current_version(c: sqlite3.Connection) -> int:
    row = c.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _migrate(c: sqlite3.Connection) -> None:
    c.execute(migrations.SCHEMA_VERSION_DDL)
    c.commit()
    c.isolation_level = None  # explicit transactions below
    try:
        c.execute("BEGIN IMMEDIATE")
        try:
            for step in migrations.pending(_current_version(c)):
                for statement in step.statements("sqlite"):
                    c.execute(statement)
                c.execute("INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                          (step.version, step.description, time.time()))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
    finally:
        c.isolation_level = "DEFERRED"
