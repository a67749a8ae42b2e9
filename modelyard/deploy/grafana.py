"""`modelyard render grafana`: the Grafana dashboards of a yard.yaml, built with grafana-foundation-sdk's typed
builders (pure: the spec in, dashboards as JSON dicts out; modelyard/deploy/cli.py writes the files and
modelyard/deploy/kubernetes.py wraps them in ConfigMaps for Grafana's dashboard sidecar).

Three dashboards, linked to each other by their tag: the cluster overview, one model (a `model` variable), one API
key (a `key` variable). Every expression is built from the metric names of observability/metrics.py, with the
suffixes Prometheus exposes (`_total` for counters, `_bucket` for histograms); every panel asks the data source
chosen in the `datasource` variable, so the files import into any Grafana with a Prometheus data source."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from modelyard.observability.metrics import (
    CONTROL_DECISIONS,
    EJECTIONS_TOTAL,
    IN_FLIGHT,
    QUEUE_DEPTH,
    REJECTIONS_TOTAL,
    REPLICA_RESTARTS,
    REPLICAS,
    REPLICAS_DESIRED,
    REQUEST_SECONDS,
    REQUESTS_TOTAL,
    RETRIES_TOTAL,
    ROUTING_DECISION_SECONDS,
    ROUTING_PLUGIN_SECONDS,
    TOKENS_TOTAL,
    TTFT_SECONDS,
    USAGE_BUFFERED,
)
from modelyard.routing.endpoints import ReplicaState
from modelyard.spec.schema import YardSpec

Dashboard = dict[str, Any]

TAG = "modelyard"
DATASOURCE_VAR = "datasource"
RATE = "$__rate_interval"
RARE = "5m"  # the window of rare events (retries, ejections, control decisions): counted per 5 minutes
QUANTILES = (0.5, 0.9, 0.99)
REFRESH = "30s"
UIDS = {"cluster": "modelyard-cluster", "model": "modelyard-model", "key": "modelyard-key"}

REQUESTS = f"{REQUESTS_TOTAL}_total"
TOKENS = f"{TOKENS_TOTAL}_total"
REJECTIONS = f"{REJECTIONS_TOTAL}_total"
RETRIES = f"{RETRIES_TOTAL}_total"
EJECTIONS = f"{EJECTIONS_TOTAL}_total"
SERVER_ERROR = 'status=~"5..|error"'  # `error`: failed after admission (the engine broke off, a timeout mid-stream)


def datasource() -> DataSourceRef:
    """The data source every panel and variable asks: the one chosen in the dashboard's `datasource` variable."""
    return DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VAR}}}")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


def _sel(*matchers: str) -> str:
    """A selector's braces for the matchers given ('' when none)."""
    kept = [m for m in matchers if m]
    return "{" + ",".join(kept) + "}" if kept else ""


def rate(counter: str, by: str, match: str = "", window: str = RATE) -> str:
    return f"sum by ({by}) (rate({counter}{_sel(match)}[{window}]))"


def quantiles(histogram: str, by: str, match: str = "") -> list[Query]:
    """p50/p90/p99 of a histogram, per `by` (a label list; '' for one series)."""
    keys = f"{by}, le" if by else "le"
    legend = " ".join(f"{{{{{label.strip()}}}}}" for label in by.split(",") if label.strip())
    return [Query(f"histogram_quantile({q:g}, sum by ({keys}) (rate({histogram}_bucket{_sel(match)}[{RATE}])))",
                  f"p{q * 100:g} {legend}".strip()) for q in QUANTILES]


def error_ratio(by: str, match: str = "") -> str:
    return (f"{rate(REQUESTS, by, ','.join(filter(None, (match, SERVER_ERROR))))}\n/\n"
            f"{rate(REQUESTS, by, match)}")


def replicas_vs_desired(match: str = "") -> list[Query]:
    gone = ReplicaState.STOPPED.value  # stopped replicas are history, not capacity
    return [Query(f'max by (model, state) ({REPLICAS}{_sel(match, f"state!={json.dumps(gone)}")})',
                  "{{model}} {{state}}"),
            Query(f"max by (model) ({REPLICAS_DESIRED}{_sel(match)})", "{{model}} desired")]


def decisions(match: str = "") -> Query:
    # a gauge that only grows until `up` restarts (the control plane's count): increase() reads a restart as a reset
    return Query(f"max by (model, action) (increase({CONTROL_DECISIONS}{_sel(match)}[{RARE}]))",
                 "{{model}} {{action}}")


def _target(ref: str, query: Query) -> prometheus.Dataquery:
    target = prometheus.Dataquery().ref_id(ref).expr(query.expr)
    return target.legend_format(query.legend) if query.legend else target


@dataclass
class Board:
    """One dashboard being built: panels get ids in order (rows included), so ids are unique and stable."""

    title: str
    uid: str
    description: str
    builder: builders.Dashboard = field(init=False)
    next_id: int = 1

    def __post_init__(self) -> None:
        link = (builders.DashboardLink("modelyard").type(DashboardLinkType.DASHBOARDS).tags([TAG])
                .as_dropdown(True).include_vars(False).keep_time(True))
        self.builder = (builders.Dashboard(self.title).uid(self.uid).description(self.description).tags([TAG])
                        .editable().tooltip(DashboardCursorSync.CROSSHAIR).time("now-3h", "now")
                        .refresh(REFRESH).timezone("browser").link(link)
                        .with_variable(builders.DatasourceVariable(DATASOURCE_VAR).label("Data source")
                                       .type("prometheus")))

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def variable(self, name: str, label: str, query: str, default: str | None = None, multi: bool = False) -> None:
        variable = (builders.QueryVariable(name).label(label).datasource(datasource()).query(query)
                    .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC))
        if multi:
            variable = variable.multi(True).include_all(True).all_value(".*")
            default = default or "$__all"
        if default is not None:
            text = "All" if default == "$__all" else default
            variable = variable.current(VariableOption(text=text, value=default, selected=True))
        self.builder.with_variable(variable)

    def row(self, title: str) -> None:
        self.builder.with_row(builders.Row(title).id(self._id()))

    def series(self, title: str, unit: str, queries: list[Query], span: int = 12, description: str = "") -> None:
        panel = (timeseries.Panel().id(self._id()).title(title).datasource(datasource())
                 .unit(unit).span(span).height(8).fill_opacity(10).min(0))
        if description:
            panel = panel.description(description)
        for ref, query in zip("ABCDEFGH", queries, strict=False):
            panel = panel.with_target(_target(ref, query))
        self.builder.with_panel(panel)

    def stat(self, title: str, unit: str, query: Query, span: int = 6) -> None:
        panel = (stat.Panel().id(self._id()).title(title).datasource(datasource()).unit(unit).span(span).height(4)
                 .with_target(_target("A", query).instant()))
        self.builder.with_panel(panel)

    def build(self) -> Dashboard:
        data: Dashboard = json.loads(json.dumps(self.builder.build(), cls=JSONEncoder))
        return data


def cluster_overview(spec: YardSpec) -> Dashboard:
    board = Board("modelyard / cluster", UIDS["cluster"],
                  f"Every model of the cluster ({len(spec.models)} in yard.yaml): traffic, latency, load, replicas.")
    board.stat("Requests/s", "reqps", Query(f"sum(rate({REQUESTS}[{RATE}]))"))
    board.stat("Error ratio (5xx, failed)", "percentunit",
               Query(f'sum(rate({REQUESTS}{{{SERVER_ERROR}}}[{RATE}])) / sum(rate({REQUESTS}[{RATE}]))'))
    board.stat("In flight", "short", Query(f"sum({IN_FLIGHT})"))
    board.stat("Ready replicas", "short",
               Query(f'sum(max by (model) ({REPLICAS}{{state="{ReplicaState.READY.value}"}}))'))
    board.row("Traffic")
    board.series("Requests/s by model and status", "reqps",
                 [Query(rate(REQUESTS, "model, status"), "{{model}} {{status}}")])
    board.series("Error ratio (5xx, failed) by model", "percentunit", [Query(error_ratio("model"), "{{model}}")])
    board.series("Tokens/s by model and kind", "short", [Query(rate(TOKENS, "model, kind"), "{{model}} {{kind}}")])
    board.series("Rejections/s by reason", "reqps",
                 [Query(rate(REJECTIONS, "model, reason"), "{{model}} {{reason}}")])
    board.row("Latency")
    board.series("Time to first token", "s", quantiles(TTFT_SECONDS, "model"),
                 description="p50, p90 and p99 from the gateway's histogram, per model")
    board.series("End-to-end latency", "s", quantiles(REQUEST_SECONDS, "model"))
    board.row("Load")
    board.series("Requests in flight", "short", [Query(f"sum by (model) ({IN_FLIGHT})", "{{model}}")])
    board.series("Admission queue depth", "short", [Query(f"sum by (model) ({QUEUE_DEPTH})", "{{model}}")])
    _replica_rows(board)
    board.series("Usage writer backlog", "short",
                 [Query(f"max by (pod, instance) ({USAGE_BUFFERED})", "{{pod}} {{instance}}")],
                 description="Usage records waiting to be written to the store, per gateway")
    board.series("Routing decision time p99", "s",
                 [Query(f"histogram_quantile(0.99, sum by (model, le) "
                        f"(rate({ROUTING_DECISION_SECONDS}_bucket[{RATE}])))", "{{model}}")])
    return board.build()


def _replica_rows(board: Board, match: str = "") -> None:
    board.row("Replicas and control plane")
    board.series("Replicas by state vs desired", "short", replicas_vs_desired(match),
                 description="The supervisor's replicas by state, and how many the control plane wants")
    board.series(f"Control decisions (per {RARE})", "short", [decisions(match)],
                 description="Scale, start, stop, sleep, wake and held decisions of the control plane")
    board.row("Failures")
    board.series(f"Ejections (per {RARE})", "short",
                 [Query(f"sum by (model, replica) (increase({EJECTIONS}{_sel(match)}[{RARE}]))",
                        "{{model}} replica {{replica}}")], span=8)
    board.series(f"Retries on another replica (per {RARE})", "short",
                 [Query(f"sum by (model) (increase({RETRIES}{_sel(match)}[{RARE}]))", "{{model}}")], span=8)
    board.series("Replica restarts", "short",
                 [Query(f"max by (model, replica) ({REPLICA_RESTARTS}{_sel(match)})",
                        "{{model}} replica {{replica}}")], span=8)


def model_dashboard(spec: YardSpec) -> Dashboard:
    board = Board("modelyard / model", UIDS["model"], "One model: traffic by status and key, latency, replicas.")
    board.variable("model", "Model", f"label_values({REPLICAS_DESIRED}, model)",
                   default=spec.models[0].name if spec.models else None)
    m = 'model="$model"'
    board.row("Traffic")
    board.series("Requests/s by status", "reqps", [Query(rate(REQUESTS, "status", m), "{{status}}")], span=8)
    board.series("Error ratio (5xx, failed)", "percentunit", [Query(error_ratio("model", m), "errors")], span=8)
    board.series("Tokens/s by kind", "short", [Query(rate(TOKENS, "kind", m), "{{kind}}")], span=8)
    board.series("Requests/s by key (top 10)", "reqps",
                 [Query(f"topk(10, {rate(REQUESTS, 'key', m)})", "{{key}}")])
    board.series("Rejections/s by reason", "reqps", [Query(rate(REJECTIONS, "reason", m), "{{reason}}")])
    board.row("Latency")
    board.series("Time to first token", "s", quantiles(TTFT_SECONDS, "", m), span=8)
    board.series("End-to-end latency", "s", quantiles(REQUEST_SECONDS, "", m), span=8)
    board.series("Routing time p99", "s", [
        Query(f"histogram_quantile(0.99, sum by (le) (rate({ROUTING_DECISION_SECONDS}_bucket{{{m}}}[{RATE}])))",
              "decision"),
        Query(f"histogram_quantile(0.99, sum by (plugin, le) "
              f"(rate({ROUTING_PLUGIN_SECONDS}_bucket{{{m}}}[{RATE}])))", "{{plugin}}")], span=8)
    board.row("Load")
    board.series("Requests in flight", "short", [Query(f"sum({IN_FLIGHT}{{{m}}})", "in flight")])
    board.series("Admission queue depth", "short", [Query(f"sum({QUEUE_DEPTH}{{{m}}})", "waiting")])
    _replica_rows(board, m)
    return board.build()


def key_dashboard(spec: YardSpec) -> Dashboard:
    board = Board("modelyard / key", UIDS["key"], "One API key (by its name): requests, tokens, rejections.")
    board.variable("key", "Key", f"label_values({REQUESTS}, key)")
    board.variable("model", "Model", f'label_values({REQUESTS}{{key="$key"}}, model)', multi=True)
    k = 'key="$key",model=~"$model"'
    board.stat("Requests in range", "short", Query(f"sum(increase({REQUESTS}{{{k}}}[$__range]))"))
    board.stat("Tokens in range", "short", Query(f"sum(increase({TOKENS}{{{k}}}[$__range]))"))
    board.stat("Rejections in range", "short", Query(f"sum(increase({REJECTIONS}{{{k}}}[$__range]))"))
    board.stat("Error ratio (5xx, failed)", "percentunit", Query(error_ratio("key", k)))
    board.row("Requests")
    board.series("Requests/s by model and status", "reqps",
                 [Query(rate(REQUESTS, "model, status", k), "{{model}} {{status}}")])
    board.series("Rejections/s by reason", "reqps",
                 [Query(rate(REJECTIONS, "model, reason", k), "{{model}} {{reason}}")],
                 description="Limits of the key (rpm, tpm, concurrency, budget), models not allowed, full queues")
    board.row("Tokens")
    board.series("Tokens/s by model and kind", "short", [Query(rate(TOKENS, "model, kind", k), "{{model}} {{kind}}")])
    board.series("Tokens in the last hour", "short",
                 [Query(f"sum by (model) (increase({TOKENS}{{{k}}}[1h]))", "{{model}}")])
    board.row("Latency")
    board.series("Time to first token", "s", quantiles(TTFT_SECONDS, "model", k))
    board.series("End-to-end latency", "s", quantiles(REQUEST_SECONDS, "model", k))
    return board.build()


def dashboards(spec: YardSpec) -> dict[str, Dashboard]:
    """uid -> dashboard JSON, in the order of UIDS."""
    built = [cluster_overview(spec), model_dashboard(spec), key_dashboard(spec)]
    return {d["uid"]: d for d in built}


def dashboard_text(dashboard: Dashboard) -> str:
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"
