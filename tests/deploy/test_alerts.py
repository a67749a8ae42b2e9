from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from modelyard.deploy.alerts import alert_rules
from modelyard.observability import metrics
from tests.deploy.conftest import spec_named

# (alert, eval time, input series, the labels of each alert expected to fire)
CASES: list[tuple[str, str, list[tuple[str, str]], list[dict[str, str]]]] = [
    ("ModelyardReplicaDown", "10m", [(f'{metrics.REPLICAS}{{model="qwen-8b",state="failed"}}', "1x20"),
                                     (f'{metrics.REPLICAS}{{model="qwen-32b",state="ready"}}', "2x20")],
     [{"model": "qwen-8b", "state": "failed", "severity": "warning"}]),
    ("ModelyardNoReadyReplica", "15m", [(f'{metrics.REPLICAS_DESIRED}{{model="qwen-8b"}}', "2x20"),
                                        (f'{metrics.REPLICAS}{{model="qwen-8b",state="ready"}}', "0x20"),
                                        (f'{metrics.REPLICAS_DESIRED}{{model="bge-m3"}}', "0x20"),
                                        (f'{metrics.REPLICAS}{{model="bge-m3",state="ready"}}', "0x20")],
     [{"model": "qwen-8b", "severity": "critical"}]),
    ("ModelyardTTFTBudgetBurn", "70m",
     [(f'{metrics.TTFT_SECONDS}_bucket{{model="qwen-32b",key="team-a",le="2.5"}}', "0+1x80"),
      (f'{metrics.TTFT_SECONDS}_count{{model="qwen-32b",key="team-a"}}', "0+10x80"),
      (f'{metrics.TTFT_SECONDS}_bucket{{model="qwen-8b",key="team-a",le="1.0"}}', "0+10x80"),  # within its SLO
      (f'{metrics.TTFT_SECONDS}_count{{model="qwen-8b",key="team-a"}}', "0+10x80")],
     [{"model": "qwen-32b", "severity": "critical", "window": "1h"},
      {"model": "qwen-32b", "severity": "warning", "window": "6h"}]),
    ("ModelyardQueueGrowing", "25m", [(f'{metrics.QUEUE_DEPTH}{{model="qwen-8b"}}', "0+1x30"),
                                      (f'{metrics.QUEUE_DEPTH}{{model="qwen-32b"}}', "3x30")],
     [{"model": "qwen-8b", "severity": "warning"}]),
    ("ModelyardErrorRate", "16m",
     [(f'{metrics.REQUESTS_TOTAL}_total{{model="qwen-8b",key="team-a",status="503"}}', "0+5x20"),
      (f'{metrics.REQUESTS_TOTAL}_total{{model="qwen-8b",key="team-a",status="200"}}', "0+10x20"),
      (f'{metrics.REQUESTS_TOTAL}_total{{model="qwen-32b",key="team-a",status="200"}}', "0+10x20")],
     [{"model": "qwen-8b", "severity": "warning"}]),
    ("ModelyardLimiterUnavailable", "8m",
     [(f'{metrics.REJECTIONS_TOTAL}_total{{model="qwen-8b",key="team-a",reason="limiter_unavailable"}}', "0+3x10")],
     [{"severity": "critical"}]),
    ("ModelyardUsageWriterBehind", "8m", [(f'{metrics.USAGE_BUFFERED}{{pod="gw-1"}}', "5000x10"),
                                          (f'{metrics.USAGE_BUFFERED}{{pod="gw-2"}}', "10x10")],
     [{"pod": "gw-1", "severity": "warning"}]),
]


def _rules_file(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    rules = alert_rules(spec_named("gpu"))
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path, rules


def _annotations(rules: dict[str, Any], alert: str, labels: dict[str, str]) -> dict[str, str]:
    rule = next(r for g in rules["groups"] for r in g["rules"] if r["alert"] == alert
                and all(r["labels"].get(k) == v for k, v in labels.items() if k in r["labels"])
                and ("model" not in labels or labels["model"] in r["expr"] or "model=" not in r["expr"]))
    return {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], v)
            for k, v in rule["annotations"].items()}


def _test_case(rules: dict[str, Any], alert: str, at: str, series: list[tuple[str, str]],
               firing: list[dict[str, str]]) -> dict[str, Any]:
    expected = [{"exp_labels": labels, "exp_annotations": _annotations(rules, alert, labels)} for labels in firing]
    return {"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [{"eval_time": "1m", "alertname": alert, "exp_alerts": []},
                                {"eval_time": at, "alertname": alert, "exp_alerts": expected}]}


def test_promtool_checks_the_rules(promtool: Path, tmp_path: Path) -> None:
    path, _ = _rules_file(tmp_path)
    result = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_each_alert(promtool: Path, tmp_path: Path) -> None:
    path, rules = _rules_file(tmp_path)
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert alerts == {c[0] for c in CASES}  # a test for every alert
    tests = {"rule_files": [path.name], "evaluation_interval": "1m",
             "tests": [_test_case(rules, *case) for case in CASES]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([str(promtool), "test", "rules", "tests.yaml"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_model_without_slo_has_no_burn_rule() -> None:
    rules = alert_rules(spec_named("default"))
    assert [g["name"] for g in rules["groups"]] == ["modelyard"]
    ttft = [r for g in alert_rules(spec_named("gpu"))["groups"] for r in g["rules"]
            if r["alert"] == "ModelyardTTFTBudgetBurn"]
    assert len(ttft) == 4 and all('le="' in r["expr"] for r in ttft)  # two windows for each of two models
