"""Scores replicas by load: the engine's requests (running + waiting at the last scrape, plus the requests the
gateway sent there since, minus those that ended since: always fresh, and it counts other clients' requests too),
with waiting requests counted `waiting_weight` more times, since they have not started; and the engine's KV cache
usage. 1 for the least loaded candidate, 0 for the most loaded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint

TYPE = "load"
KIND = "scorer"


class Params(PluginParams):
    waiting_weight: Annotated[float, Field(ge=0)] = 1.0
    kv_weight: Annotated[float, Field(ge=0, le=1)] = 0.25


def queue(endpoint: Endpoint, waiting_weight: float) -> float:
    return (endpoint.running + endpoint.in_flight - endpoint.in_flight_at_scrape
            + (1.0 + waiting_weight) * endpoint.waiting)


class LoadScorer:
    def __init__(self, params: Params) -> None:
        self.waiting_weight, self.kv_weight = params.waiting_weight, params.kv_weight

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        k = 1.0 + self.waiting_weight  # `queue`, inlined, for speed: this runs for every replica of every request
        queues = [e.running + e.in_flight - e.in_flight_at_scrape + k * e.waiting for e in endpoints]
        low, high = min(queues), max(queues)
        kv = self.kv_weight
        if high <= low:
            return [1.0 - kv * e.kv_usage for e in endpoints] if kv else [1.0] * len(endpoints)
        span = high - low
        if not kv:
            return [(high - q) / span for q in queues]
        keep = (1.0 - kv) / span
        return [keep * (high - q) + kv * (1.0 - e.kv_usage) for q, e in zip(queues, endpoints, strict=True)]


def create(params: Params, context: Context) -> LoadScorer:
    return LoadScorer(params)
