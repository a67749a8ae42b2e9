"""`modelyard status`: a running cluster's models as its gateway's /health reports them."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import click
from rich.console import Console
from rich.table import Table

STATES = ("starting", "draining", "asleep", "waking")


def models_table(health: dict[str, Any]) -> Table:
    table = Table(title=f"cluster: {health.get('status', '?')}", title_justify="left", expand=False)
    for column in ("model", "strategy", "ready", "desired", *STATES):
        table.add_column(column)
    for name, model in sorted(health.get("models", {}).items()):
        ready, desired = model.get("ready", 0), model.get("replicas", 0)
        style = "green" if ready >= desired and (ready or not desired) else "yellow" if ready else "red"
        table.add_row(name, model.get("strategy", "fixed"), f"[{style}]{ready}[/]", str(desired),
                      *(str(model.get(state, "")) for state in STATES))
    return table


def _base_url(file: str, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    from modelyard.cli import _load

    spec = _load(file, Console(stderr=True))
    host = "127.0.0.1" if spec.gateway.host in ("0.0.0.0", "::") else spec.gateway.host
    return f"http://{host}:{spec.gateway.port}"


def fetch(base: str) -> dict[str, Any]:
    """/health's JSON; it answers 503 (with the same body) while a model has no ready replica."""
    try:
        with urllib.request.urlopen(base + "/health", timeout=5) as reply:
            text = reply.read()
    except urllib.error.HTTPError as exc:
        text = exc.read()
    body: dict[str, Any] = json.loads(text)
    return body


@click.command("status")
@click.option("-f", "--file", "file", default="yard.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="The yard.yaml of the running cluster (its gateway's address).")
@click.option("--url", default=None, help="The gateway's base URL instead (http://HOST:PORT).")
@click.option("--json", "as_json", is_flag=True, help="Print /health's JSON.")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
def status(file: str, url: str | None, as_json: bool, watch: bool) -> None:
    """Each model of a running cluster: strategy, ready and desired replicas, those starting, draining, asleep,
    waking."""
    console = Console()
    base = _base_url(file, url)
    while True:
        try:
            health = fetch(base)
        except (OSError, ValueError) as exc:
            console.print(f"[bold red]error:[/] no cluster answers at {base} ({type(exc).__name__})", highlight=False)
            sys.exit(2)
        if as_json:
            click.echo(json.dumps(health, indent=2, sort_keys=True))
        else:
            if watch:
                console.clear()
            console.print(models_table(health))
        if not watch:
            return
        try:
            time.sleep(1.0)
        except KeyboardInterrupt:
            return
