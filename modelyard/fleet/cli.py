"""`modelyard autoscale replay TRACE`: a policy over a recorded trace, without a cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

MAX_ROWS = 60


@click.group("autoscale")
def autoscale() -> None:
    """The autoscaler, offline."""


@autoscale.command("replay")
@click.argument("trace", type=click.Path(exists=True, dir_okay=False))
@click.option("-f", "--file", "file", default="yard.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="The yard.yaml whose model's replicas: policy is replayed.")
@click.option("--model", default=None, help="The model (default: the trace file's name).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Change one field of the policy (replicas:), e.g. --set scale_down_delay_s=60; repeatable.")
def replay_command(trace: str, file: str, model: str | None, overrides: tuple[str, ...]) -> None:
    """Run the model's autoscaling policy over TRACE (state_dir/traces/<model>.jsonl, recorded by `up`): its
    decisions and replica-seconds, against what the recorded cluster ran."""
    from modelyard.cli import _load
    from modelyard.engines import get_engine
    from modelyard.fleet.trace import read_trace, replay

    console = Console()
    spec = _load(file, console)
    name = model or Path(trace).name.removesuffix(".jsonl")
    found = spec.model(name)
    if found is None or found.scaling is None:
        console.print(f"[bold red]error:[/] {file} has no autoscaled model {name!r} (pass --model)", highlight=False)
        sys.exit(2)
    fields = dict(item.partition("=")[::2] for item in overrides)
    try:
        policy = found.scaling.model_validate({**found.scaling.model_dump(), **fields})
    except ValidationError as exc:
        console.print(f"[bold red]error:[/] --set: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}",
                      highlight=False)
        sys.exit(2)
    samples = list(read_trace(Path(trace)))
    if not samples:
        console.print(f"[bold red]error:[/] {trace} holds no samples", highlight=False)
        sys.exit(2)
    target = policy.target_in_flight or float(get_engine(found.engine).slots(found))
    result = replay(samples, policy, found.slo, target)
    table = Table(title=f"{name}: {len(result.decisions)} decision(s) over {result.duration_s:.0f} s", expand=False)
    for column in ("at (s)", "replicas", "why"):
        table.add_column(column)
    for at, before, after, reason in result.decisions[:MAX_ROWS]:
        table.add_row(f"{at:.1f}", f"{before} -> {after}", reason)
    console.print(table)
    if len(result.decisions) > MAX_ROWS:
        console.print(f"... and {len(result.decisions) - MAX_ROWS} more")
    ratio = (f" ({result.replica_seconds / result.recorded_replica_seconds:.2f}x)"
             if result.recorded_replica_seconds else "")
    console.print(f"replica-seconds: {result.replica_seconds:.0f} replayed, "
                  f"{result.recorded_replica_seconds:.0f} recorded{ratio}; {result.samples} samples", highlight=False)
