"""modelyard/store/factory.py: which store a url opens."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelyard.store.factory import open_store
from modelyard.store.postgres import PostgresStore
from modelyard.store.sqlite import SQLiteStore


def _open(url: str | None, state_dir: Path) -> type:
    async def run() -> type:
        store = await open_store(url, state_dir)
        await store.close()
        return type(store)
    return asyncio.run(run())


def test_sqlite_by_default_in_the_state_dir(tmp_path: Path) -> None:
    assert _open(None, tmp_path / "state") is SQLiteStore
    assert (tmp_path / "state" / "modelyard.db").exists()


def test_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _open(f"sqlite:///{tmp_path / 'abs.db'}", tmp_path) is SQLiteStore
    assert (tmp_path / "abs.db").exists()
    monkeypatch.chdir(tmp_path)
    assert _open("sqlite:///rel.db", tmp_path / "unused") is SQLiteStore
    assert (tmp_path / "rel.db").exists()


def test_postgres_url(pg_url: str, tmp_path: Path) -> None:
    assert _open(pg_url, tmp_path) is PostgresStore


def test_unknown_scheme(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="store.url"):
        _open("mysql://x", tmp_path)
