"""Keeps the replicas that are ready and not ejected; every profile runs it first, listed or not."""

from __future__ import annotations

from collections.abc import Callable

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint, ReplicaState

TYPE = "ready"
KIND = "filter"


class Params(PluginParams):
    pass


class ReadyFilter:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def filter(self, request: RouteRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        now, ready = self.clock(), ReplicaState.READY
        return [e for e in endpoints if e.state is ready and e.ejected_until <= now]  # Endpoint.routable, inlined


def create(params: Params, context: Context) -> ReadyFilter:
    return ReadyFilter(context.clock)
