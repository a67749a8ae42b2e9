"""Scores replicas by the requests the gateway has in flight to them (always fresh): 1 for the fewest, 0 for the
most, linear in between."""

from __future__ import annotations

from collections.abc import Sequence

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint

TYPE = "least-inflight"
KIND = "scorer"


class Params(PluginParams):
    pass


def min_max_inverse(values: Sequence[float]) -> list[float]:
    """1 for the smallest value, 0 for the largest, linear in between; all 1 when they are equal."""
    low, high = min(values), max(values)
    if high <= low:
        return [1.0] * len(values)
    span = high - low
    return [(high - v) / span for v in values]


class LeastInflightScorer:
    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        return min_max_inverse([e.in_flight for e in endpoints])


def create(params: Params, context: Context) -> LeastInflightScorer:
    return LeastInflightScorer()
