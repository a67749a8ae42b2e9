"""modelyard/store/migrations.py: a versioned schema, applied once, on both backends."""

from __future__ import annotations

from typing import Any

from modelyard.store import migrations
from modelyard.store.base import KeyLimits, Store
from tests.store.helpers import with_store


def test_steps_are_ordered_and_complete() -> None:
    versions = [s.version for s in migrations.STEPS]
    assert versions == list(range(1, len(versions) + 1)) and migrations.LATEST == versions[-1]
    assert migrations.pending(0) == list(migrations.STEPS) and migrations.pending(migrations.LATEST) == []
    for step in migrations.STEPS:
        assert step.statements("sqlite") and step.statements("postgres")


def test_opening_twice_migrates_once_and_keeps_data(store_url: str) -> None:
    async def first(store: Store) -> int:
        await store.create_key("team-a", KeyLimits())
        return int(await _version(store))

    async def second(store: Store) -> tuple[int, list[str]]:
        return int(await _version(store)), [k.name for k in await store.list_keys()]

    assert with_store(store_url, first) == migrations.LATEST
    assert with_store(store_url, second) == (migrations.LATEST, ["team-a"])


async def _version(store: Any) -> int:
    return int(await store.schema_version())
