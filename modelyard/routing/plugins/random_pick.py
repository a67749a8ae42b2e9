"""Picks a replica uniformly at random, whatever their scores (a baseline)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint

TYPE = "random"
KIND = "picker"


class Params(PluginParams):
    pass


class RandomPicker:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, request: RouteRequest, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> Endpoint:
        return self.rng.choice(endpoints)


def create(params: Params, context: Context) -> RandomPicker:
    return RandomPicker(context.rng)
