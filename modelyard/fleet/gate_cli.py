"""`modelyard gate -f yard.yaml MODEL`: a model's validation gate against running replicas (by default, through the
running cluster's gateway); exit 0 when it passes, 1 when it fails, 2 for a usage error."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console

from modelyard.engines import get_engine
from modelyard.fleet.gate import GateReport, run_gate
from modelyard.spec.validation import GoldenError, load_golden

KEY_ENV = "MODELYARD_API_KEY"


def _usage_error(console: Console, message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    sys.exit(2)


def _failure_lines(report: GateReport, limit: int = 5) -> list[str]:
    lines: list[str] = []
    for check in report.checks:
        for row in check.details.get("failures", [])[:limit]:
            lines.append(f"    {check.name}: entry {row['entry']} ({row['label']}) on {row['replica']}: "
                         f"{row['reason']}; answered {row['answer']!r}")
    return lines


@click.command("gate")
@click.option("-f", "--file", "file", default="yard.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="The yard.yaml that declares the model's validation:.")
@click.argument("model_name", metavar="MODEL")
@click.option("--url", "urls", multiple=True, metavar="URL",
              help="A replica to check (its base URL, repeatable); default: the running cluster's gateway.")
@click.option("--against", "against", multiple=True, metavar="URL",
              help="A replica of the serving revision to compare with (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def gate(file: str, model_name: str, urls: tuple[str, ...], against: tuple[str, ...], as_json: bool) -> None:
    """Run MODEL's validation gate (quality, determinism, speed) against running replicas."""
    from modelyard.cli import _load

    console = Console(stderr=True)
    spec = _load(file, console)
    model = spec.model(model_name)
    if model is None:
        _usage_error(console, f"{file} has no model {model_name!r} (models: {', '.join(m.name for m in spec.models)})")
    spec_dir = Path(file).resolve().parent
    engine = get_engine(model.engine)
    quality = model.validation.quality if model.validation is not None else None
    if quality is not None:
        golden = Path(quality.golden)
        try:
            load_golden(golden if golden.is_absolute() else spec_dir / golden, engine.task(model).value)
        except GoldenError as exc:
            _usage_error(console, "the golden set cannot be used:\n  " + "\n  ".join(exc.problems))
    key = os.environ.get(KEY_ENV)
    bearer = {"Authorization": f"Bearer {key}"} if key else {}
    if urls:  # the replicas themselves: what the model's engine adapter says they take
        headers, upstream, candidates = engine.headers(model) or bearer, None, list(urls)
    else:
        if not key:
            _usage_error(console, f"set ${KEY_ENV} to a key of the running cluster (or give the replicas with --url)")
        host = "127.0.0.1" if spec.gateway.host in ("0.0.0.0", "::") else spec.gateway.host
        headers, upstream, candidates = bearer, model.name, [f"http://{host}:{spec.gateway.port}"]
    report = asyncio.run(run_gate(model, spec_dir, candidates, list(against), headers=headers,
                                  upstream_model=upstream))
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo("\n".join([f"{model.name}: {report.summary()}", *_failure_lines(report)]))
    sys.exit(0 if report.passed else 1)
