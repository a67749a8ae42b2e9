"""Drops replicas that are past saturation (engine waiting queue, KV cache usage, gateway in-flight), unless all
of them are: then every replica stays and the scorers choose the least bad one."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint

TYPE = "saturation-filter"
KIND = "filter"


class Params(PluginParams):
    max_waiting: Annotated[int, Field(ge=0)] = 4
    max_kv_usage: Annotated[float, Field(gt=0, le=1)] = 0.95
    max_in_flight: Annotated[int, Field(ge=1)] | None = None


def saturated(endpoint: Endpoint, max_waiting: int, max_kv_usage: float, max_in_flight: int | None) -> bool:
    if max_in_flight is not None and endpoint.in_flight >= max_in_flight:
        return True
    return endpoint.waiting_now() > max_waiting or endpoint.kv_usage >= max_kv_usage


class SaturationFilter:
    def __init__(self, params: Params) -> None:
        self.max_waiting, self.max_kv_usage, self.max_in_flight = (params.max_waiting, params.max_kv_usage,
                                                                   params.max_in_flight)

    def filter(self, request: RouteRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        max_waiting, max_kv, max_in_flight = self.max_waiting, self.max_kv_usage, self.max_in_flight
        if max_in_flight is None:  # `saturated`, inlined: this runs for every replica of every request
            kept = [e for e in endpoints if e.kv_usage < max_kv and not (
                e.waiting and e.waiting + e.in_flight - e.in_flight_at_scrape > max_waiting)]
        else:
            kept = [e for e in endpoints if not saturated(e, max_waiting, max_kv, max_in_flight)]
        return kept or endpoints


def create(params: Params, context: Context) -> SaturationFilter:
    return SaturationFilter(params)
