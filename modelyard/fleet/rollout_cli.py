"""`modelyard plan`: what applying a yard.yaml would change on the cluster that runs from the same state_dir."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

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
