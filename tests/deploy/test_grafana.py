from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard as DashboardModel

from modelyard.cli import main
from modelyard.deploy import grafana
from modelyard.deploy.grafana import DATASOURCE_VAR, UIDS, dashboards
from modelyard.deploy.kubernetes import DASHBOARD_LABEL, render
from tests.deploy.conftest import SPECS, spec_named
from tests.observability.test_metrics_doc import exposed_names

STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
MATCHERS = re.compile(r"\{[^}]*\}")
RANGES = re.compile(r"\[[^\]]*\]")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENT = re.compile(r"(?<![\w$:])[a-zA-Z_:][a-zA-Z0-9_:]*")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}
PANEL_TYPES = {"row", "timeseries", "stat"}


def metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression: identifiers that are not functions, keywords, label names,
    strings, durations or grouping lists."""
    bare = GROUPING.sub(" ", RANGES.sub(" ", MATCHERS.sub(" ", STRINGS.sub('""', expr))))
    names = set()
    for match in IDENT.finditer(bare):
        rest = bare[match.end():].lstrip()
        if not rest.startswith("(") and match.group() not in KEYWORDS:
            names.add(match.group())
    return names


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # a collapsed row holds its panels
    return out


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in all_panels(dashboard) for t in p.get("targets", [])]


def variable_metrics(dashboard: dict[str, Any]) -> list[str]:
    queries = [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return [m.group(1) for q in queries for m in [re.match(r"label_values\(([a-zA-Z_:][\w:]*)", q)] if m]


@pytest.fixture(scope="module", params=list(SPECS))
def rendered(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    return dashboards(spec_named(request.param))


def test_the_extractor_finds_metrics_and_only_metrics() -> None:
    expr = ('histogram_quantile(0.9, sum by (model, le) (rate(a_bucket{model="$model",le="x"}[$__rate_interval])))'
            " / on (model) group_left b > 0 and max by (pod) (c:d) unless vector(1)")
    assert metric_names(expr) == {"a_bucket", "b", "c:d"}


def test_three_dashboards(rendered: dict[str, dict[str, Any]]) -> None:
    assert list(rendered) == list(UIDS.values())
    assert len({d["title"] for d in rendered.values()}) == 3


def test_every_dashboard_loads_into_the_librarys_model(rendered: dict[str, dict[str, Any]]) -> None:
    for dashboard in rendered.values():
        model = DashboardModel.from_json(dashboard)
        assert json.loads(json.dumps(model, cls=JSONEncoder)) == dashboard  # nothing unknown, nothing lost


def test_required_keys_ids_and_grid(rendered: dict[str, dict[str, Any]]) -> None:
    for dashboard in rendered.values():
        assert {"uid", "title", "panels", "schemaVersion", "templating", "time", "tags"} <= set(dashboard)
        assert dashboard["schemaVersion"] >= 36 and dashboard["tags"] == ["modelyard"]
        panels = all_panels(dashboard)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids), dashboard["uid"]
        for panel in panels:
            assert panel["type"] in PANEL_TYPES and panel["title"]
            grid = panel["gridPos"]
            assert 0 < grid["w"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0


def test_every_panel_asks_the_datasource_variable(rendered: dict[str, dict[str, Any]]) -> None:
    for dashboard in rendered.values():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables[DATASOURCE_VAR]["type"] == "datasource"
        assert variables[DATASOURCE_VAR]["query"] == "prometheus"
        for panel in all_panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": f"${{{DATASOURCE_VAR}}}"}, panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), panel["title"]
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == f"${{{DATASOURCE_VAR}}}"


def test_every_template_variable_used_is_defined(rendered: dict[str, dict[str, Any]]) -> None:
    for dashboard in rendered.values():
        defined = {v["name"] for v in dashboard["templating"]["list"]}
        used = {m for e in expressions(dashboard) for m in re.findall(r"\$(\w+)", e) if not m.startswith("__")}
        assert used <= defined, dashboard["uid"]


def test_the_model_and_key_dashboards_have_their_variables(rendered: dict[str, dict[str, Any]]) -> None:
    model = {v["name"] for v in rendered[UIDS["model"]]["templating"]["list"]}
    key = {v["name"] for v in rendered[UIDS["key"]]["templating"]["list"]}
    assert "model" in model and "key" in key
    assert all('model="$model"' in e for e in expressions(rendered[UIDS["model"]]))
    assert all('key="$key"' in e for e in expressions(rendered[UIDS["key"]]))


def test_every_expression_references_only_exported_metrics(rendered: dict[str, dict[str, Any]]) -> None:
    exported = exposed_names()
    used: set[str] = set()
    for dashboard in rendered.values():
        for expr in expressions(dashboard):
            names = metric_names(expr)
            assert names, f"no metric in {expr!r}"
            assert names <= exported, f"{dashboard['uid']}: {sorted(names - exported)} not exported ({expr!r})"
            used |= names
        assert set(variable_metrics(dashboard)) <= exported
    # the overview shows what the issue asks for: the histogram's buckets, the control plane, the usage writer
    assert {"modelyard_time_to_first_token_seconds_bucket", "modelyard_replicas_desired",
            "modelyard_control_decisions", "modelyard_usage_buffered_records"} <= used


def test_the_module_never_spells_a_metric_name() -> None:
    tree = ast.parse(Path(grafana.__file__).read_text())
    literals = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert not [s for s in literals if "modelyard_" in s]  # every name comes from observability/metrics.py


def test_render_grafana_writes_one_file_per_dashboard(tmp_path: Path) -> None:
    out = tmp_path / "dashboards"
    result = CliRunner().invoke(main, ["render", "grafana", "-f", str(SPECS["gpu"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{uid}.json" for uid in UIDS.values())
    expected = dashboards(spec_named("gpu"))
    for uid, dashboard in expected.items():
        assert json.loads((out / f"{uid}.json").read_text()) == dashboard


def test_kubernetes_ships_the_dashboards_as_sidecar_configmaps() -> None:
    spec = spec_named("default")
    maps = [o for o in render(spec).files["monitoring.yaml"] if o["kind"] == "ConfigMap"]
    assert len(maps) == len(UIDS)
    for config_map in maps:
        assert config_map["metadata"]["labels"][DASHBOARD_LABEL] == "1"
    shipped = {name: json.loads(text) for m in maps for name, text in m["data"].items()}
    assert shipped == {f"{uid}.json": d for uid, d in dashboards(spec).items()}


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$model": "m", "$key": "k"}


def test_every_expression_parses_as_promql(tmp_path: Path, promtool: Path) -> None:
    """Each expression, its Grafana variables replaced, as a recording rule: `promtool check rules` parses it."""
    exprs = sorted({e for d in dashboards(spec_named("gpu")).values() for e in expressions(d)})
    for variable, value in GRAFANA_VARIABLES.items():
        exprs = [e.replace(variable, value) for e in exprs]
    assert not [e for e in exprs if "$" in e]
    rules = [{"record": f"modelyard:dashboard_expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
