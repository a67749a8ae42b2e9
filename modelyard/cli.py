from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from modelyard import __version__
from modelyard.bench.cli import bench
from modelyard.deploy.cli import render
from modelyard.fleet.cli import autoscale
from modelyard.fleet.gate_cli import gate
from modelyard.fleet.rollout_cli import apply_command, plan_command, rollback_command
from modelyard.observability.cli import status
from modelyard.simulator.cli import simulate
from modelyard.spec import SpecError, load_spec
from modelyard.spec.schema import YardSpec
from modelyard.store.cli import history, keys, usage

DEFAULT_SPEC = "yard.yaml"


def _load(path: str, console: Console) -> YardSpec:
    try:
        return load_spec(path)
    except SpecError as exc:
        console.print(f"[bold red]{path} is not valid:[/]", highlight=False)
        for problem in exc.problems:
            console.print(f"  {problem}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelyard")
@click.pass_context
def main(ctx: click.Context) -> None:
    """modelyard: your own LLM inference cluster from one yard.yaml."""
    ctx.obj = _store_settings(Path(DEFAULT_SPEC))


def _store_settings(path: Path) -> dict[str, str | None]:
    """`keys` and `usage` use the store of ./yard.yaml when there is one (their flags override it)."""
    if not path.is_file():
        return {}
    try:
        spec = load_spec(path)
    except SpecError:
        return {}
    from modelyard.up import state_dir_for

    return {"state_dir": str(state_dir_for(spec, path)), "store_url": spec.store.url}


@main.command()
@click.argument("file", default=DEFAULT_SPEC, type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check a yard.yaml; errors name the path and line."""
    console = Console(stderr=True)
    spec = _load(file, console)
    replicas = sum(m.max_replicas for m in spec.models)
    click.echo(f"{file}: ok ({len(spec.models)} model(s), {replicas} replica(s))")


@main.command()
@click.option("-f", "--file", "file", default=DEFAULT_SPEC, show_default=True, type=click.Path(dir_okay=False),
              help="The yard.yaml to run.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Gateway port (overrides gateway.port).")
@click.option("--host", default=None, help="Gateway address (overrides gateway.host).")
@click.option("--dry-run", is_flag=True, help="Print every replica's command line and environment; start nothing.")
def up(file: str, port: int | None, host: str | None, dry_run: bool) -> None:
    """Run the cluster in yard.yaml on this machine: replicas, supervisor and gateway."""
    from modelyard.up import dry_run as print_plans
    from modelyard.up import run_up

    console = Console()
    spec = _listen_on(_load(file, console), port, host)
    sys.exit(print_plans(spec, console) if dry_run else run_up(spec, Path(file), console))


def _listen_on(spec: YardSpec, port: int | None, host: str | None) -> YardSpec:
    overrides = {k: v for k, v in (("port", port), ("host", host)) if v is not None}
    return spec.model_copy(update={"gateway": spec.gateway.model_copy(update=overrides)}) if overrides else spec


@main.command()
@click.option("-f", "--file", "file", default=DEFAULT_SPEC, show_default=True, type=click.Path(dir_okay=False),
              help="The yard.yaml whose models it serves.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Gateway port (overrides gateway.port).")
@click.option("--host", default=None, help="Gateway address (overrides gateway.host).")
@click.option("--kube-api", default=None, metavar="URL",
              help="The Kubernetes API to discover replicas from (default: in a pod, its cluster's).")
@click.option("--namespace", default=None, help="The models' Services' namespace (default: the pod's).")
def gateway(file: str, port: int | None, host: str | None, kube_api: str | None, namespace: str | None) -> None:
    """The gateway alone, its replicas discovered (the image's entry point in Kubernetes)."""
    from modelyard.gateway.serve import run_gateway

    console = Console()
    spec = _listen_on(_load(file, console), port, host)
    sys.exit(run_gateway(spec, Path(file), console, kube_api, namespace))


main.add_command(autoscale)
main.add_command(plan_command)
main.add_command(apply_command)
main.add_command(rollback_command)
main.add_command(status)
main.add_command(simulate)
main.add_command(bench)
main.add_command(keys)
main.add_command(usage)
main.add_command(gate)
main.add_command(render)
main.add_command(history)
