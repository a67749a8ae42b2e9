"""Scores replicas by load: the requests at the engine (the larger of the gateway's fresh in-flight count and the
engine's scraped running + waiting, with waiting requests counted `waiting_weight` more times, since they have not
started) and the engine's KV cache usage. 1 for the least loaded candidate, 0 for the most loaded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint
from modelyard.routing.plugins.least_inflight import min_max_inverse

TYPE = "load"
KIND = "scorer"


class Params(PluginParams):
    waiting_weight: Annotated[float, Field(ge=0)] = 1.0
    kv_weight: Annotated[float, Field(ge=0, le=1)] = 0.25


def queue(endpoint: Endpoint, waiting_weight: float) -> float:
    waiting = endpoint.waiting_now()
    return max(endpoint.in_flight, endpoint.running + waiting) + waiting_weight * waiting


class LoadScorer:
    def __init__(self, params: Params) -> None:
        self.waiting_weight, self.kv_weight = params.waiting_weight, params.kv_weight

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        weight = self.waiting_weight
        queues = []
        for e in endpoints:  # `queue`, inlined: this runs for every replica of every request
            in_flight, waiting = e.in_flight, e.waiting
            if waiting:
                waiting += in_flight - e.in_flight_at_scrape
                if waiting < 0:
                    waiting = 0
            busy = e.running + waiting
            queues.append((busy if busy > in_flight else in_flight) + weight * waiting)
        scores = min_max_inverse(queues)
        kv = self.kv_weight
        if kv:
            keep = 1.0 - kv
            scores = [keep * s + kv * (1.0 - e.kv_usage) for s, e in zip(scores, endpoints, strict=True)]
        return scores


def create(params: Params, context: Context) -> LoadScorer:
    return LoadScorer(params)
