"""The endpoint table as data, for gateway worker processes: the parent's supervisor owns the table and sends
`snapshot(table)` to every worker; a worker `apply`s it to its own table and keeps its own counters.

Fields in PER_WORKER (requests in flight through this worker, its run of failures) are never sent. A passive
ejection decided in a worker is reported to the parent (`ejection(endpoint)`), which adopts it and sends it to
every worker; until the parent's table shows it, the worker keeps its own (`Held`), so a snapshot sent before
the report arrived does not undo it. The parent's supervisor probes an ejected replica and clears the ejection,
which reaches the workers with the next snapshot. time.monotonic() is one clock for every process on Linux.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState

PER_WORKER = frozenset({"in_flight", "in_flight_at_scrape", "consecutive_failures"})
EJECTION_FIELDS = ("ejected_until", "ejections")
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


def adopt_ejection(table: EndpointTable, report: dict[str, Any]) -> bool:
    """The parent's side: a worker ejected a replica; True if the table changed."""
    for endpoint in table.of(str(report["model"])):
        if endpoint.replica == report["replica"] and float(report["ejected_until"]) > endpoint.ejected_until:
            endpoint.ejected_until = float(report["ejected_until"])
            endpoint.ejections = max(endpoint.ejections, int(report["ejections"]))
            return True
    return False


def apply(table: EndpointTable, items: list[dict[str, Any]], held: Held, now: float) -> None:
    """A worker's side: its table becomes the parent's, keeping PER_WORKER fields and ejections not yet seen."""
    known = {f.name for f in dataclasses.fields(Endpoint)}
    current = {(e.model, e.replica): e for e in table}
    seen: set[tuple[str, int]] = set()
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
                for name in EJECTION_FIELDS:
                    fields.pop(name)
        if endpoint.ejected_until > now and "ejected_until" in fields and fields["ejected_until"] <= now:
            endpoint.consecutive_failures = 0  # the supervisor's probe brought it back
        for name, value in fields.items():
            setattr(endpoint, name, value)
    for endpoint in list(table):
        if (endpoint.model, endpoint.replica) not in seen:
            table.remove(endpoint)
