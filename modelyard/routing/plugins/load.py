"""Scores replicas by load: the engine's requests (running + waiting at the last scrape, plus the requests the
gateway sent there since, minus those that ended since: always fresh, and other clients' requests count too; never
fewer than the gateway's own requests there now), with waiting requests counted `waiting_weight` more times, since
they have not started, and the whole scaled up by the engine's KV cache usage (x (1 + `kv_weight` x usage): a
replica whose cache is full looks twice as loaded with the default). 1 for the least loaded candidate, 0 for the
most loaded, linear in between."""

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
    kv_weight: Annotated[float, Field(ge=0, le=10)] = 1.0


def queue(endpoint: Endpoint, waiting_weight: float, kv_weight: float) -> float:
    # never fewer than the requests in flight there now: one sent after the engine counted its requests but
    # before the answer arrived is in `in_flight_at_scrape` and not in `running`, so once it ends the freshened
    # count is one too low, and an idle replica would lose every tie to this one until the next scrape
    requests = max(endpoint.in_flight, endpoint.running + endpoint.in_flight - endpoint.in_flight_at_scrape
                   + (1.0 + waiting_weight) * endpoint.waiting)
    return requests * (1.0 + kv_weight * endpoint.kv_usage)


class LoadScorer:
    def __init__(self, params: Params) -> None:
        self.waiting_weight, self.kv_weight = params.waiting_weight, params.kv_weight

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        # `queue`, inlined: this runs for every replica of every request
        k, kv = 1.0 + self.waiting_weight, self.kv_weight
        return min_max_inverse([max(e.in_flight, e.running + e.in_flight - e.in_flight_at_scrape + k * e.waiting)
                                * (1.0 + kv * e.kv_usage) for e in endpoints])


def create(params: Params, context: Context) -> LoadScorer:
    return LoadScorer(params)
