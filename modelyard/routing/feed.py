"""The endpoint table as data, for gateway worker processes: the parent's supervisor owns the table and sends
`snapshot(table)` to every worker; a worker `apply`s it to its own table and keeps its own counters.

Fields in PER_WORKER (requests in flight through this worker, its run of failures) are never sent. A passive
ejection decided in a worker is reported to the parent (`ejection(endpoint)`), which adopts it and sends it to
every worker; until the parent's table shows it, the worker keeps its own (`Held`), so a snapshot sent before
the report arrived does not undo it. The parent's supervisor probes an ejected replica and clears the ejection,
which reaches the workers with the next snapshot. time.monotonic() is one clock for every process on Linux.

The cap on a model's ejected replicas (`may_eject`) holds across the workers: two workers that each eject one of a
model's two replicas would otherwise take both out. The parent refuses an ejection past the cap, and a worker lets
go of one of its own that the parent's table has no room for.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState, may_eject

PER_WORKER = frozenset({"in_flight", "in_flight_at_scrape", "consecutive_failures"})
# the engine's metrics, when a worker scrapes them itself: a parent that never scraped (0.0) does not overwrite
SCRAPE_STAMP = "scraped_at"
SCRAPE_FIELDS = ("waiting", "running", "kv_usage", "kv_blocks", "kv_block_size", "scraped_at")
Held = dict[tuple[str, int], float]


def _shared_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Endpoint) if f.name not in PER_WORKER)


def snapshot(table: EndpointTable) -> list[dict[str, Any]]:
    names = _shared_fields()
    return [{name: _plain(getattr(endpoint, name)) for name in names} for endpoint in table]


def _plain(value: Any) -> Any:
    if isinstance(value, ReplicaState):
        return value.value
    if isinstance(value, dict):
        return dict(value)
    return value


def ejection(endpoint: Endpoint) -> dict[str, Any]:
    return {"model": endpoint.model, "replica": endpoint.replica, "ejected_until": endpoint.ejected_until,
            "ejections": endpoint.ejections}


def adopt_ejection(table: EndpointTable, report: dict[str, Any], now: float | None = None) -> bool:
    """The parent's side: a worker ejected a replica; True if the table changed (False too past the cap)."""
    now = time.monotonic() if now is None else now
    peers = table.of(str(report["model"]))
    for endpoint in peers:
        if endpoint.replica == report["replica"] and float(report["ejected_until"]) > endpoint.ejected_until:
            if not may_eject(endpoint, peers, now):
                return False
            endpoint.ejected_until = float(report["ejected_until"])
            endpoint.ejections = max(endpoint.ejections, int(report["ejections"]))
            return True
    return False


def apply(table: EndpointTable, items: list[dict[str, Any]], held: Held, now: float) -> None:
    """A worker's side: its table becomes the parent's, keeping PER_WORKER fields and ejections not yet seen."""
    known = {f.name for f in dataclasses.fields(Endpoint)}
    current = {(e.model, e.replica): e for e in table}
    seen: set[tuple[str, int]] = set()
    kept: list[tuple[Endpoint, float, int]] = []  # own ejections the parent does not show yet, and what it shows
    for item in items:
        fields = {k: v for k, v in item.items() if k in known and k not in PER_WORKER}
        fields["state"] = ReplicaState(fields["state"])
        if not fields.get(SCRAPE_STAMP, 1.0):
            for name in SCRAPE_FIELDS:
                fields.pop(name, None)
        key = (str(fields["model"]), int(fields["replica"]))
        seen.add(key)
        endpoint = current.get(key)
        if endpoint is None:
            table.add(Endpoint(**fields))
            continue
        mine = held.get(key)
        if mine is not None:
            if fields["ejected_until"] >= mine or mine <= now:
                del held[key]  # the parent has it (or it is over)
            else:
                kept.append((endpoint, fields.pop("ejected_until"), fields.pop("ejections")))
        if endpoint.ejected_until > now and "ejected_until" in fields and fields["ejected_until"] <= now:
            endpoint.consecutive_failures = 0  # the supervisor's probe brought it back
        for name, value in fields.items():
            setattr(endpoint, name, value)
    for endpoint in list(table):
        if (endpoint.model, endpoint.replica) not in seen:
            table.remove(endpoint)
    for endpoint, until, ejections in kept:  # past the cap with the others' ejections: the parent will refuse it
        if not may_eject(endpoint, table.of(endpoint.model), now):
            endpoint.ejected_until, endpoint.ejections = until, ejections
            del held[(endpoint.model, endpoint.replica)]
