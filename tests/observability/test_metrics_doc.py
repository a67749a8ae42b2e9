"""docs/metrics.md lists every metric of observability/metrics.py as Prometheus exposes it, with its type, and the
engine metric names that the adapters declare."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from modelyard.engines import ENGINES, get_engine
from modelyard.observability import metrics
from modelyard.observability.metrics import GatewayMetrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
PREFIX = "modelyard_"
ROW = re.compile(r"^\| `(?P<name>modelyard_[a-z0-9_]+)` \| (?P<type>[a-z]+) \|", re.M)


def metric_constants() -> dict[str, str]:
    """Constant name -> metric name, read from the module (every str constant whose value is a modelyard_ name)."""
    return {k: v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str) and v.startswith(PREFIX)}


def metric_types() -> dict[str, str]:
    """Metric name (as registered, without suffixes) -> its type, from the gateway's own registry."""
    return {family.name: family.type for family in GatewayMetrics().registry.collect()}


def exposed(name: str, kind: str) -> set[str]:
    """The sample names Prometheus stores for one metric."""
    if kind == "counter":
        return {f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def exposed_names() -> set[str]:
    return {sample for name, kind in metric_types().items() for sample in exposed(name, kind)}


def documented() -> dict[str, str]:
    return {m["name"]: m["type"] for m in ROW.finditer(DOC.read_text())}


def test_every_constant_is_a_registered_metric() -> None:
    assert sorted(metric_constants().values()) == sorted(metric_types())


def test_every_constant_is_documented_with_its_type() -> None:
    types, rows = metric_types(), documented()
    for constant, name in metric_constants().items():
        as_exported = f"{name}_total" if types[name] == "counter" else name
        assert as_exported in rows, f"{constant} ({as_exported}) is not in {DOC.name}"
        assert rows[as_exported] == types[name], f"{as_exported}: {DOC.name} says {rows[as_exported]}"


def test_nothing_documented_that_is_not_exported() -> None:
    types = metric_types()
    exported = {f"{n}_total" if t == "counter" else n for n, t in types.items()}
    assert set(documented()) <= exported, f"{DOC.name} lists metrics that metrics.py does not define"


def test_the_engine_metrics_the_adapters_read_are_documented() -> None:
    text = DOC.read_text()
    for engine in ENGINES:
        names = get_engine(engine).metrics
        for item in fields(names):
            value = getattr(names, item.name)
            for name in (value if isinstance(value, tuple) else (value,) if value else ()):
                assert f"`{name.decode()}`" in text, f"{engine}: {name.decode()} ({item.name}) not in {DOC.name}"
