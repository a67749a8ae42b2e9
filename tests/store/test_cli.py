"""modelyard/store/cli.py: keys and usage commands on a real SQLite file."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelyard.gateway.auth import KEY_PREFIX, hash_key
from modelyard.store.base import KeyLimits, UsageRecord
from modelyard.store.cli import keys, parse_duration, usage
from modelyard.store.sqlite import SQLiteStore
from tests.store.helpers import opened


def test_parse_duration() -> None:
    assert parse_duration("30d") == 30 * 86400 and parse_duration("24h") == 86400 and parse_duration("90") == 90
    with pytest.raises(Exception, match="duration"):
        parse_duration("soon")


def test_create_list_rotate_revoke(tmp_path: Path) -> None:
    runner = CliRunner()
    state = ["--state-dir", str(tmp_path)]
    created = runner.invoke(keys, ["create", "--name", "team-a", "--models", "chat,coder", "--rpm", "60",
                                   "--tpm", "200000", "--max-concurrency", "8", "--budget-tokens", "5000000",
                                   "--priority", "batch", "--expires", "30d", *state])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith(KEY_PREFIX)

    listed = runner.invoke(keys, ["list", *state])
    assert listed.exit_code == 0 and "team-a" in listed.output and secret not in listed.output

    rotated = runner.invoke(keys, ["rotate", "team-a", *state])
    new_secret = rotated.stdout.strip().splitlines()[-1]
    assert rotated.exit_code == 0 and new_secret != secret

    async def check() -> tuple[bool, bool, float | None, tuple[str, ...]]:
        async with opened(f"sqlite:///{tmp_path / 'modelyard.db'}") as store:
            old, new = await store.lookup_key(hash_key(secret)), await store.lookup_key(hash_key(new_secret))
            assert new is not None
            return old is None, new.priority == "batch", new.expires_at, new.models
    old_gone, batch, expires, models = asyncio.run(check())
    assert old_gone and batch and expires is not None and expires > time.time() + 29 * 86400
    assert models == ("chat", "coder")

    revoked = runner.invoke(keys, ["revoke", "team-a", *state])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    again = runner.invoke(keys, ["create", "--name", "team-a", *state])
    assert again.exit_code != 0 and "already exists" in again.output
    missing = runner.invoke(keys, ["revoke", "ghost", *state])
    assert missing.exit_code != 0 and "no key" in missing.output


def test_usage_table(tmp_path: Path) -> None:
    async def seed() -> None:
        async with opened(f"sqlite:///{tmp_path / 'modelyard.db'}") as store:
            now = time.time()
            await store.write_usage([UsageRecord(now, "team-a", "chat", prompt_tokens=1234, completion_tokens=5),
                                     UsageRecord(now - 3 * 86400, "team-b", "coder", prompt_tokens=7)])
    asyncio.run(seed())
    runner = CliRunner()
    by_key = runner.invoke(usage, ["--by", "key", "--since", "24h", "--state-dir", str(tmp_path)])
    assert by_key.exit_code == 0, by_key.output
    assert "team-a" in by_key.output and "1,234" in by_key.output and "team-b" not in by_key.output
    assert "estimated" in by_key.output  # rows charged by the gateway's count (migration 5)
    by_model = runner.invoke(usage, ["--by", "model", "--since", "7d", "--state-dir", str(tmp_path)])
    assert "chat" in by_model.output and "coder" in by_model.output


def test_the_cli_takes_the_same_bounds_and_lists_old_rows_it_cannot_date(tmp_path: Path) -> None:
    runner = CliRunner()
    state = ["--state-dir", str(tmp_path)]
    for args in (["--name", "a\nb"], ["--name", "ok", "--rpm", str(2**63)], ["--name", "ok", "--expires", "1e9w"],
                 ["--name", "ok", "--expires", "99999999999d"]):
        assert runner.invoke(keys, ["create", *args, *state]).exit_code != 0, args

    async def old_row() -> None:  # as main wrote it: expires_in_s 1e308 broke `keys list` for everyone
        store = await SQLiteStore.open(tmp_path / "modelyard.db")
        await store.create_key("forever", KeyLimits(expires_at=1e308))
        await store.close()
    asyncio.run(old_row())
    listed = runner.invoke(keys, ["list", *state])
    assert listed.exit_code == 0 and "forever" in listed.output and "never" in listed.output, listed.output


def test_names_are_listed_as_text_never_as_markup(tmp_path: Path) -> None:
    runner = CliRunner()
    state = ["--state-dir", str(tmp_path)]
    for name in ("[/]", "[red]team[/red]"):  # "[/]" stopped `keys list` for everyone on main (a MarkupError)
        assert runner.invoke(keys, ["create", "--name", name, *state]).exit_code == 0
    listed = runner.invoke(keys, ["list", *state])
    assert listed.exit_code == 0 and "[/]" in listed.output and "[red]team[/red]" in listed.output, listed.output
