"""The status screen's table (observability/status.py)."""

from __future__ import annotations

from rich.console import Console

from modelyard.observability.status import status_table
from modelyard.routing.endpoints import Endpoint, EndpointTable
from modelyard.spec.loader import parse_spec


def test_a_disaggregated_models_replicas_show_their_role() -> None:
    spec = parse_spec("models:\n  - {name: m, engine: simulator, roles: {prefill: 1, decode: 1}}\n"
                      "  - {name: plain, engine: simulator}\n")
    table = EndpointTable()
    for index, role in enumerate(("prefill", "decode")):
        table.add(Endpoint(model="m", replica=index, url="", role=role))
    table.add(Endpoint(model="plain", replica=0, url=""))
    console = Console(width=200, record=True)
    console.print(status_table(spec, table))
    lines = console.export_text().splitlines()
    assert [line.split("│")[3].strip() for line in lines if "simulator" in line] == ["0 prefill", "1 decode", "0"]
