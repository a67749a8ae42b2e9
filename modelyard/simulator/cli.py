from __future__ import annotations

import click


@click.command("simulate")
@click.option("--port", type=int, default=8000, show_default=True)
def simulate(port: int) -> None:
    """Run the vLLM-compatible simulated engine (stub: not built yet)."""
    raise click.ClickException("the simulator is not built yet")
