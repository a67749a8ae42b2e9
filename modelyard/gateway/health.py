"""`/health`: by model, the replicas that take requests apart from those ready but ejected by this gateway's
outlier detection (gateway/failover.py) and those in any other state (starting, draining, asleep, unhealthy, ...).

`ready` counts only the replicas a request can be routed to now, so a model whose ready replicas are all ejected
(or none ready) makes the status `degraded` (503), as a load balancer in front expects.
"""

from __future__ import annotations

import time
from typing import Any

from modelyard.routing.endpoints import EndpointTable, ReplicaState

SHOWN = tuple(s for s in ReplicaState if s not in (ReplicaState.READY, ReplicaState.STOPPED))


def model_health(table: EndpointTable, model: str, view: dict[str, Any], min_replicas: int,
                 now: float | None = None) -> dict[str, Any]:
    now = time.monotonic() if now is None else now
    replicas = table.of(model)
    routable = sum(1 for e in replicas if e.routable(now))
    entry: dict[str, Any] = {"ready": routable, "replicas": view.get("desired", min_replicas),
                             "strategy": view.get("strategy", "fixed")}
    if ejected := sum(1 for e in replicas if e.ready and e.ejected_until > now):
        entry["ejected"] = ejected
    for state in SHOWN:
        if count := sum(1 for e in replicas if e.state is state):
            entry[state.value] = count
    return entry


def health_body(models: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    ok = all(v["ready"] > 0 or v["replicas"] == 0 for v in models.values())
    return {"status": "ok" if ok else "degraded", "models": models}, ok
