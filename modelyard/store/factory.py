"""Choosing the store from the spec: `open_store(url, state_dir)`.

- no url, `sqlite://` or `sqlite:///path/to.db`: SQLite, by default `<state_dir>/modelyard.db`;
- `postgresql://...` or `postgres://...`: PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

from modelyard.store.base import Store

DEFAULT_DB = "modelyard.db"


async def open_store(url: str | None, state_dir: str | Path = ".modelyard") -> Store:
    if url and url.startswith(("postgresql://", "postgres://")):
        from modelyard.store.postgres import PostgresStore

        return await PostgresStore.open(url)
    if not url or url.startswith("sqlite:"):
        from modelyard.store.sqlite import SQLiteStore

        rest = (url or "sqlite://").removeprefix("sqlite:").removeprefix("//")
        path = rest[1:] if rest.startswith("/") else rest  # sqlite:///rel.db -> rel.db, sqlite:////abs -> /abs
        target = Path(path) if path else Path(state_dir) / DEFAULT_DB
        return await SQLiteStore.open(target)
    raise ValueError(f"store.url {url!r}: use postgresql://... or sqlite:///path (or leave it out for SQLite)")
