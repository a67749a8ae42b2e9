from __future__ import annotations

from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from modelyard.observability.metrics import ROUTING_FILE_PREFIX, GatewayMetrics, RoutingTimings, printable


def _decision_count(registry: CollectorRegistry, model: str) -> float:
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(f'modelyard_routing_decision_seconds_count{{model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_routing_timings_alone_show_own_decisions() -> None:
    registry = CollectorRegistry()
    timings = RoutingTimings(registry)
    for _ in range(3):
        timings.decision("m").observe(2e-5)
    assert _decision_count(registry, "m") == 3


def test_several_workers_timings_are_summed_from_what_each_published(tmp_path: Path) -> None:
    other = RoutingTimings()
    for _ in range(5):
        other.decision("m").observe(2e-5)
    other.plugin("m", "prefix-affinity").observe(1e-5)
    # another worker process published its timings (as `publish` does, under its own pid)
    (tmp_path / f"{ROUTING_FILE_PREFIX}999999.json").write_bytes(orjson.dumps(other.snapshot()))
    registry = CollectorRegistry()
    mine = RoutingTimings(registry, shared_dir=tmp_path)
    mine.decision("m").observe(3e-5)
    mine.publish()  # its own file is not counted twice: the live values are
    assert _decision_count(registry, "m") == 6
    text = generate_latest(registry).decode()
    assert 'modelyard_routing_plugin_seconds_count{model="m",plugin="prefix-affinity"} 1.0' in text


def test_a_damaged_published_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / f"{ROUTING_FILE_PREFIX}1.json").write_bytes(b"{not json")
    registry = CollectorRegistry()
    mine = RoutingTimings(registry, shared_dir=tmp_path)
    mine.decision("m").observe(3e-5)
    assert _decision_count(registry, "m") == 1


def test_metric_labels_from_key_names_are_written_escaped() -> None:
    metrics = GatewayMetrics()
    metrics.requests.labels("m", "evil\x00\nname\x1b[2J", "200").inc()  # a key name that main wrote raw
    text = metrics.render()
    assert b"\x00" not in text and b"\x1b" not in text
    lines = [line for line in text.split(b"\n") if b"evil" in line]
    assert lines and all(line.startswith(b"modelyard_requests_") for line in lines)  # no line of its own
    assert printable("team-a (\u00fc)") == "team-a (\u00fc)"
