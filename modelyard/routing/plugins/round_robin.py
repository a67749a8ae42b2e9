"""Takes the replicas in turn, whatever their scores (a baseline)."""

from __future__ import annotations

from collections.abc import Sequence

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint

TYPE = "round-robin"
KIND = "picker"


class Params(PluginParams):
    pass


class RoundRobinPicker:
    def __init__(self) -> None:
        self.next = 0

    def pick(self, request: RouteRequest, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> Endpoint:
        index = self.next
        self.next = index + 1
        return endpoints[index % len(endpoints)]


def create(params: Params, context: Context) -> RoundRobinPicker:
    return RoundRobinPicker()
