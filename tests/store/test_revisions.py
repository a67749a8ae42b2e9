"""Revisions in the store, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from modelyard.store.base import Store
from modelyard.store.factory import open_store
from modelyard.store.revisions import revision_id


async def _scenario(store: Store) -> None:
    first = await store.add_revision("models: [a]\n", "ana", "first", "serving")
    assert (first.seq, first.id, first.state) == (1, revision_id("models: [a]\n"), "serving")
    refused = await store.add_revision("models: [b]\n", "bo", "broken", "refused", gate='{"passed": false}')
    second = await store.add_revision("models: [c]\n", "ana", "second", "serving")
    listed = await store.list_revisions()
    assert [(r.seq, r.state) for r in listed] == [(3, "serving"), (2, "refused"), (1, "superseded")]
    assert (await store.get_revision("2")) == refused
    assert (await store.get_revision(second.id[:6])) == second
    assert await store.get_revision("999") is None and await store.get_revision("zzzz") is None
    again = await store.add_revision("models: [a]\n", "ana", "rollback to 1", "serving")
    assert again.id == first.id and again.seq == 4
    assert (await store.get_revision(first.id)) == again  # the newest with that content


def run(open_: Callable[[], Awaitable[Store]]) -> None:
    async def go() -> None:
        store = await open_()
        try:
            await _scenario(store)
        finally:
            await store.close()
    asyncio.run(go())


def test_revisions_on_sqlite(tmp_path: Path) -> None:
    run(lambda: open_store(None, tmp_path))


@pytest.mark.timeout(120)
def test_revisions_on_postgres(pg_url: str, tmp_path: Path) -> None:
    run(lambda: open_store(pg_url, tmp_path))


def test_history_lists_and_shows_revisions(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from modelyard.cli import main

    async def seed() -> None:
        store = await open_store(None, tmp_path)
        try:
            await store.add_revision("models: [a]\n", "ana", "modelyard up", "serving")
            await store.add_revision("models: [b]\n", "bo", "faster", "refused", gate='{"passed": false}')
        finally:
            await store.close()

    asyncio.run(seed())
    listed = CliRunner().invoke(main, ["history", "--state-dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert "modelyard up" in listed.output and "refused" in listed.output and "failed" in listed.output
    shown = CliRunner().invoke(main, ["history", "--state-dir", str(tmp_path), "--show", "2"])
    assert shown.exit_code == 0 and shown.output.endswith("---\nmodels: [b]\n")
    missing = CliRunner().invoke(main, ["history", "--state-dir", str(tmp_path), "--show", "9"])
    assert missing.exit_code == 1 and "no revision '9'" in missing.output
