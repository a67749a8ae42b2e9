"""`modelyard keys create|list|revoke|rotate` and `modelyard usage`.

Both find the store from `--store-url` / `--state-dir` (or MODELYARD_STORE_URL / MODELYARD_STATE_DIR), or
from `ctx.obj["store_url"]` / `ctx.obj["state_dir"]` when the parent command put them there (from yard.yaml).
A new or rotated secret is printed once, to stdout; nothing else ever shows it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape  # a name is text, never markup: "[/]" would stop the table for every name
from rich.table import Table

from modelyard.store.base import (
    MAX_LIMIT,
    PRIORITIES,
    GroupBy,
    KeyLimits,
    KeyRecord,
    Priority,
    Store,
    StoreError,
    UsageRow,
    limits_problem,
    name_problem,
)
from modelyard.store.factory import open_store

T = TypeVar("T")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'30d', '24h', '90m', '45s', '2w' (or plain seconds) as seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30d, 24h, 90m")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def _settings(ctx: click.Context, store_url: str | None, state_dir: str | None) -> tuple[str | None, str]:
    obj = ctx.find_root().obj if isinstance(ctx.find_root().obj, dict) else {}
    return store_url or obj.get("store_url"), state_dir or obj.get("state_dir") or ".modelyard"


def _with_store(ctx: click.Context, store_url: str | None, state_dir: str | None,
                work: Callable[[Store], Awaitable[T]]) -> T:
    url, directory = _settings(ctx, store_url, state_dir)

    async def run() -> T:
        store = await open_store(url, directory)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


def _store_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--state-dir", envvar="MODELYARD_STATE_DIR", default=None,
                      help="state folder holding modelyard.db (default .modelyard)")(fn)
    return click.option("--store-url", envvar="MODELYARD_STORE_URL", default=None,
                        help="postgresql://... or sqlite:///path (default: SQLite in the state folder)")(fn)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):  # a row written before expiries were bounded (1e308)
        return "never" if ts > 0 else "-"


def _console() -> Console:
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console.width = 200
    return console


def _limit(value: int) -> str:
    return "-" if not value else f"{value:,}"


def _status(key: KeyRecord, now: float) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


@click.group("keys")
def keys() -> None:
    """Manage API keys: create, list, revoke, rotate."""


@keys.command("create")
@click.option("--name", required=True, help="the key's name (shown in usage and metrics)")
@click.option("--models", default="", help="comma-separated models the key may use (default: all)")
@click.option("--rpm", type=click.IntRange(0, MAX_LIMIT), default=0, help="requests per minute (0: no limit)")
@click.option("--tpm", type=click.IntRange(0, MAX_LIMIT), default=0, help="tokens per minute (0: no limit)")
@click.option("--max-concurrency", type=click.IntRange(0, MAX_LIMIT), default=0,
              help="requests in flight (0: no limit)")
@click.option("--budget-tokens", type=click.IntRange(0, MAX_LIMIT), default=0, help="total tokens (0: no limit)")
@click.option("--priority", type=click.Choice(PRIORITIES), default="interactive", show_default=True)
@click.option("--expires", default=None, help="lifetime, e.g. 30d, 12h")
@_store_options
@click.pass_context
def create(ctx: click.Context, name: str, models: str, rpm: int, tpm: int, max_concurrency: int,
           budget_tokens: int, priority: Priority, expires: str | None, store_url: str | None,
           state_dir: str | None) -> None:
    """Create a key; its secret is printed once and cannot be shown again."""
    if (wrong := name_problem(name)) is not None:
        raise click.BadParameter(wrong, param_hint="--name")
    now = time.time()
    expires_at = now + parse_duration(expires) if expires else None
    limits = KeyLimits(models=tuple(m.strip() for m in models.split(",") if m.strip()), rpm=rpm, tpm=tpm,
                       max_concurrency=max_concurrency, budget_tokens=budget_tokens, priority=priority,
                       expires_at=expires_at)
    if (wrong := limits_problem(limits, now)) is not None:
        raise click.BadParameter(wrong)
    record, secret = _with_store(ctx, store_url, state_dir, lambda s: s.create_key(name, limits))
    click.echo(f"created key {record.name!r}; its secret, shown only now:", err=True)
    click.echo(secret)


@keys.command("list")
@_store_options
@click.pass_context
def list_(ctx: click.Context, store_url: str | None, state_dir: str | None) -> None:
    """List keys (never their secrets)."""
    records = _with_store(ctx, store_url, state_dir, lambda s: s.list_keys())
    now = time.time()
    table = Table("name", "status", "models", "rpm", "tpm", "concurrency", "budget", "used", "priority",
                  "expires", "created")
    for k in records:
        table.add_row(escape(k.name), _status(k, now), escape(",".join(k.models)) or "*", _limit(k.rpm), _limit(k.tpm),
                      _limit(k.max_concurrency), _limit(k.budget_tokens), f"{k.used_tokens:,}", k.priority,
                      _when(k.expires_at), _when(k.created_at))
    _console().print(table)


@keys.command("revoke")
@click.argument("name")
@_store_options
@click.pass_context
def revoke(ctx: click.Context, name: str, store_url: str | None, state_dir: str | None) -> None:
    """Revoke a key: every gateway refuses it from its next request."""
    record = _with_store(ctx, store_url, state_dir, lambda s: s.revoke_key(name))
    click.echo(f"revoked key {record.name!r}")


@keys.command("rotate")
@click.argument("name")
@_store_options
@click.pass_context
def rotate(ctx: click.Context, name: str, store_url: str | None, state_dir: str | None) -> None:
    """Give a key a new secret (printed once); the old secret stops working at once."""
    record, secret = _with_store(ctx, store_url, state_dir, lambda s: s.rotate_key(name))
    click.echo(f"rotated key {record.name!r}; its new secret, shown only now:", err=True)
    click.echo(secret)


def usage_table(rows: list[UsageRow], by: str) -> Table:
    table = Table(by, "requests", "errors", "prompt tokens", "completion tokens", "cached tokens",
                  "avg TTFT (s)", "avg latency (s)", "estimated")
    for r in rows:
        table.add_row(escape(r.group), f"{r.requests:,}", f"{r.errors:,}", f"{r.prompt_tokens:,}",
                      f"{r.completion_tokens:,}", f"{r.cached_tokens:,}",
                      "-" if r.avg_ttft_s is None else f"{r.avg_ttft_s:.3f}",
                      "-" if r.avg_e2e_s is None else f"{r.avg_e2e_s:.3f}", f"{r.estimated:,}")
    return table


@click.command("usage")
@click.option("--by", type=click.Choice(["key", "model"]), default="key", show_default=True)
@click.option("--since", default="24h", show_default=True, help="how far back, e.g. 24h, 7d")
@_store_options
@click.pass_context
def usage(ctx: click.Context, by: str, since: str, store_url: str | None, state_dir: str | None) -> None:
    """Requests and tokens by key or by model."""
    start = time.time() - parse_duration(since)
    group: GroupBy = "model" if by == "model" else "key"
    rows = _with_store(ctx, store_url, state_dir, lambda s: s.usage_report(group, start))
    _console().print(usage_table(rows, by))


@click.command("history")
@click.option("--show", "show", default=None, metavar="REV", help="Print one revision (number or id) in full.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=30, show_default=True)
@click.option("-f", "--file", "file", default=None, type=click.Path(dir_okay=False),
              help="Use the store of this yard.yaml (default: ./yard.yaml's, or --state-dir / --store-url).")
@_store_options
@click.pass_context
def history(ctx: click.Context, show: str | None, limit: int, file: str | None, store_url: str | None,
            state_dir: str | None) -> None:
    """The revisions of yard.yaml that `up` ran or `apply` applied, newest first."""
    console = Console()
    if file is not None:
        from modelyard.spec import SpecError, load_spec
        from modelyard.up import state_dir_for

        try:
            spec = load_spec(file)
        except SpecError as exc:
            raise click.ClickException("\n".join(exc.problems)) from None
        store_url, state_dir = store_url or spec.store.url, state_dir or str(state_dir_for(spec, Path(file)))
    if show is not None:
        found = _with_store(ctx, store_url, state_dir, lambda s: s.get_revision(show))
        if found is None:
            raise click.ClickException(f"no revision {show!r} (see `modelyard history`)")
        when = datetime.fromtimestamp(found.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        click.echo(f"revision {found.seq} ({found.id}), {found.state}, {when}, by {found.author}: {found.message}")
        click.echo(f"gate: {found.gate or 'none ran'}")
        click.echo("---")
        click.echo(found.spec, nl=not found.spec.endswith("\n"))
        return
    rows = _with_store(ctx, store_url, state_dir, lambda s: s.list_revisions(limit))
    table = Table("rev", "id", "when (UTC)", "state", "author", "message", "gate")
    for r in rows:
        gate = "-" if not r.gate else ("passed" if '"passed": true' in r.gate or '"passed":true' in r.gate
                                       else "failed")
        table.add_row(str(r.seq), r.id, datetime.fromtimestamp(r.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                      r.state, r.author, r.message, gate)
    console.print(table)
