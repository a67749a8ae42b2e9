from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from modelyard.routing.endpoints import EndpointTable, ReplicaState
from modelyard.spec.schema import YardSpec

STATE_STYLE = {
    ReplicaState.STARTING: "yellow",
    ReplicaState.READY: "green",
    ReplicaState.DRAINING: "cyan",
    ReplicaState.ASLEEP: "blue",
    ReplicaState.WAKING: "yellow",
    ReplicaState.UNHEALTHY: "red",
    ReplicaState.RESTARTING: "magenta",
    ReplicaState.FAILED: "bold red",
    ReplicaState.STOPPED: "dim",
}


def status_table(spec: YardSpec, table: EndpointTable, desired: dict[str, int] | None = None) -> Table:
    out = Table(title="models", title_justify="left", expand=False)
    for column in ("model", "engine", "replica", "state", "url", "pid", "restarts", "in flight", "detail"):
        out.add_column(column)
    for model in spec.models:
        endpoints = table.of(model.name)
        want = (desired or {}).get(model.name)
        if want is not None and want != len(endpoints):
            out.add_row(model.name, model.engine, "-", Text(f"{len(endpoints)} of {want} wanted", style="yellow"),
                        "", "", "", "", "")
        for endpoint in endpoints:
            out.add_row(model.name, model.engine, f"{endpoint.replica} {endpoint.role}" if endpoint.role else
                        str(endpoint.replica),
                        Text(endpoint.state.value, style=STATE_STYLE[endpoint.state]), endpoint.url or "-",
                        str(endpoint.pid or "-"), str(endpoint.restarts), str(endpoint.in_flight),
                        endpoint.detail[:60])
    return out


def banner(base_url: str, key_line: str, log_dir: str) -> Group:
    lines = Text()
    lines.append("modelyard is serving\n", style="bold")
    lines.append("  endpoint  ")
    lines.append(base_url + "\n", style="bold cyan")
    lines.append("  API key   ")
    lines.append(key_line + "\n", style="bold")
    lines.append(f"  logs      {log_dir}\n")
    lines.append("  Ctrl-C stops everything\n", style="dim")
    return Group(lines)


class ChangePrinter:
    """For a terminal that is not a TTY (CI, a log file): one line per replica state change."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._seen: dict[str, tuple[str, str, str]] = {}

    def update(self, table: EndpointTable) -> None:
        for endpoint in table:
            now = (endpoint.state.value, endpoint.url, endpoint.detail)  # a new reason is news too
            if self._seen.get(endpoint.id) != now:
                self._seen[endpoint.id] = now
                detail = f" ({endpoint.detail})" if endpoint.detail else ""
                self.console.print(f"replica {endpoint.id}: {endpoint.state.value} {endpoint.url}{detail}",
                                   highlight=False, markup=False, soft_wrap=True)
