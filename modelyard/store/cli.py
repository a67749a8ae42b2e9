from __future__ import annotations

import click


@click.group("keys")
def keys() -> None:
    """Manage API keys (stub: not built yet)."""


@click.command("usage")
def usage() -> None:
    """Usage report (stub: not built yet)."""
    raise click.ClickException("usage is not built yet")
