from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum


class ReplicaState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class Endpoint:
    """One replica of one model, as the router sees it."""

    model: str
    replica: int
    url: str
    state: ReplicaState = ReplicaState.STARTING
    in_flight: int = 0
    restarts: int = 0
    pid: int | None = None
    detail: str = ""
    upstream_model: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0  # time.monotonic(); passive outlier ejection (gateway/failover.py)

    @property
    def ready(self) -> bool:
        return self.state is ReplicaState.READY

    def routable(self, now: float) -> bool:
        return self.state is ReplicaState.READY and self.ejected_until <= now

    @property
    def id(self) -> str:
        return f"{self.model}/{self.replica}"


class EndpointTable:
    """The replicas of every model; written by the fleet, read by the router."""

    def __init__(self) -> None:
        self._by_model: dict[str, list[Endpoint]] = {}

    def add(self, endpoint: Endpoint) -> None:
        self._by_model.setdefault(endpoint.model, []).append(endpoint)

    def remove(self, endpoint: Endpoint) -> None:
        replicas = self._by_model.get(endpoint.model, [])
        if endpoint in replicas:
            replicas.remove(endpoint)

    def of(self, model: str) -> list[Endpoint]:
        return self._by_model.get(model, [])

    def ready(self, model: str) -> list[Endpoint]:
        return [e for e in self._by_model.get(model, []) if e.ready]

    def __iter__(self) -> Iterator[Endpoint]:
        for replicas in self._by_model.values():
            yield from replicas
