"""Power of two choices: draws two replicas at random and keeps the one with the higher score."""

from __future__ import annotations

import random
from collections.abc import Sequence

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint

TYPE = "power-of-two"
KIND = "picker"


class Params(PluginParams):
    pass


class PowerOfTwoPicker:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, request: RouteRequest, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> Endpoint:
        if len(endpoints) == 1:
            return endpoints[0]
        a, b = self.rng.sample(range(len(endpoints)), 2)
        if scores[a] == scores[b]:
            return endpoints[a]  # a is already a random one of the two
        return endpoints[a] if scores[a] > scores[b] else endpoints[b]


def create(params: Params, context: Context) -> PowerOfTwoPicker:
    return PowerOfTwoPicker(context.rng)
