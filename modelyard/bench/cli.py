from __future__ import annotations

import click


@click.command("bench")
def bench() -> None:
    """Load-test OpenAI-compatible endpoints (stub: not built yet)."""
    raise click.ClickException("bench is not built yet")
