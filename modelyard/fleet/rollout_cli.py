"""`modelyard plan`, `apply` and `rollback`: a yard.yaml against the cluster that runs from the same state_dir (its
serving revision in the store), applied over the running `up`'s control socket (fleet/control.py)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from modelyard.spec import SpecError, load_spec
from modelyard.spec.diff import describe, plan
from modelyard.spec.loader import parse_spec
from modelyard.spec.schema import YardSpec
from modelyard.store.factory import open_store
from modelyard.store.revisions import Revision


async def serving_revision(spec: YardSpec, spec_path: Path) -> Revision | None:
    from modelyard.up import state_dir_for

    store = await open_store(spec.store.url, state_dir_for(spec, spec_path))
    try:
        return next((r for r in await store.list_revisions(200) if r.state == "serving"), None)
    finally:
        await store.close()


@click.command("plan")
@click.option("-f", "--file", "file", default="yard.yaml", show_default=True, type=click.Path(dir_okay=False))
def plan_command(file: str) -> None:
    """The changes against the serving revision: what is replaced (rolling, gated), what changes in place, what
    needs `up` restarted. Exit code 0: no changes, 2: changes, 1: an error (as `terraform plan
    -detailed-exitcode`)."""
    console = Console()
    try:
        new = load_spec(file)
        serving = asyncio.run(serving_revision(new, Path(file)))
        if serving is None:
            raise click.ClickException("no serving revision in this state_dir's store: start `modelyard up` first")
        current = parse_spec(serving.spec, source=f"revision {serving.seq}")
    except SpecError as exc:
        console.print(f"[bold red]{file} is not valid:[/]", highlight=False)
        for problem in exc.problems:
            console.print(f"  {problem}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    except click.ClickException as exc:
        console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        sys.exit(1)
    result = plan(current, new)
    console.print(f"against revision {serving.seq} ({serving.id}, {serving.message})", style="dim", highlight=False)
    for line in describe(result, new):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    sys.exit(0 if result.empty else 2)


async def post_apply(state_dir: Path, text: str, author: str, message: str, max_surge: int,
                     show: Callable[[str], None]) -> dict[str, Any]:
    """The revision to the running `up` over its control socket; its progress lines shown as they come."""
    import aiohttp
    import orjson

    from modelyard.fleet.control import socket_path

    path = socket_path(state_dir)
    if not path.exists():
        raise click.ClickException(f"no running `modelyard up` here (no {path})")
    body = {"spec": text, "author": author, "message": message, "max_surge": max_surge}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)), timeout=timeout) as session:
            async with session.post("http://modelyard/apply", json=body) as resp:
                if resp.status != 200:
                    raise click.ClickException((await resp.json()).get("error", f"answered {resp.status}"))
                result: dict[str, Any] = {}
                async for line in resp.content:
                    item = orjson.loads(line)
                    if "progress" in item:
                        show(str(item["progress"]))
                    result = item.get("result", result)
                return result
    except aiohttp.ClientError as exc:
        raise click.ClickException(f"cannot reach `modelyard up` over {path} ({type(exc).__name__})") from None


def _apply_text(file: str, text: str, message: str, author: str | None, yes: bool, max_surge: int) -> None:
    from modelyard.fleet.rollout import author as default_author
    from modelyard.up import state_dir_for

    console = Console()
    try:
        new = parse_spec(text, source=Path(file).name)
        serving = asyncio.run(serving_revision(new, Path(file)))
    except SpecError as exc:
        for problem in exc.problems:
            console.print(f"  {problem}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    if serving is None:
        console.print("[bold red]error:[/] no serving revision here: start `modelyard up` first", highlight=False)
        sys.exit(1)
    result = plan(parse_spec(serving.spec, source=f"revision {serving.seq}"), new)
    for line in describe(result, new):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if result.empty:
        return
    if not yes and not (sys.stdin.isatty() and click.confirm("apply these changes?")):
        console.print("not applied (pass --yes to apply without asking)", highlight=False)
        sys.exit(1)
    try:
        outcome = asyncio.run(post_apply(state_dir_for(new, Path(file)), text, author or default_author(), message,
                                         max_surge, lambda line: console.print(line, highlight=False, markup=False)))
    except click.ClickException as exc:
        console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        sys.exit(1)
    if not outcome.get("applied"):
        console.print(f"[bold red]refused:[/] {outcome.get('error') or 'a gate failed'}", highlight=False,
                      soft_wrap=True)
        sys.exit(1)
    console.print(f"applied: revision {outcome.get('revision')}", highlight=False)


@click.command("apply")
@click.option("-f", "--file", "file", default="yard.yaml", show_default=True, type=click.Path(dir_okay=False))
@click.option("-m", "--message", default="", help="Why: kept with the revision.")
@click.option("--author", default=None, help="Who (default $USER).")
@click.option("--yes", is_flag=True, help="Apply without asking.")
@click.option("--max-surge", type=click.IntRange(1, 64), default=1, show_default=True,
              help="New replicas started at once beside the old ones during a rolling replacement.")
def apply_command(file: str, message: str, author: str | None, yes: bool, max_surge: int) -> None:
    """Apply yard.yaml to the running `up`: in place where it can, else by gated rolling replacement; the serving
    revision keeps serving when a gate fails (exit 1)."""
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"{file}: {exc.strerror}") from None
    _apply_text(file, text, message, author, yes, max_surge)


@click.command("rollback")
@click.option("-f", "--file", "file", default="yard.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="The yard.yaml of the running cluster (where its state_dir is).")
@click.option("--to", "to", default=None, metavar="REV", help="The revision to go back to (default: the previous).")
@click.option("--yes", is_flag=True, help="Roll back without asking.")
@click.option("--max-surge", type=click.IntRange(1, 64), default=1, show_default=True)
def rollback_command(file: str, to: str | None, yes: bool, max_surge: int) -> None:
    """Apply an earlier revision again (the previous one that served, or --to REV), the same way as apply."""
    console = Console()
    target = asyncio.run(_rollback_target(file, to))
    if target is None:
        console.print(f"[bold red]error:[/] no revision {to or 'before the serving one'} to roll back to",
                      highlight=False)
        sys.exit(1)
    _apply_text(file, target.spec, f"rollback to {target.seq}", None, yes, max_surge)


async def _rollback_target(file: str, to: str | None) -> Revision | None:
    from modelyard.up import state_dir_for

    spec = load_spec(file)
    store = await open_store(spec.store.url, state_dir_for(spec, Path(file)))
    try:
        if to is not None:
            return await store.get_revision(to)
        revisions = await store.list_revisions(200)
        serving = next((r for r in revisions if r.state == "serving"), None)
        return next((r for r in revisions if r.state == "superseded" and serving is not None
                     and r.seq < serving.seq and r.id != serving.id), None)
    finally:
        await store.close()
