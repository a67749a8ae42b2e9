"""Picks the replica with the highest score; ties (equal scores) are broken at random."""

from __future__ import annotations

import random
from collections.abc import Sequence

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint

TYPE = "max-score"
KIND = "picker"


class Params(PluginParams):
    pass


class MaxScorePicker:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, request: RouteRequest, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> Endpoint:
        best = max(scores)
        if scores.count(best) == 1:  # max, count and index loop in C
            return endpoints[scores.index(best)]
        return self.rng.choice([e for e, s in zip(endpoints, scores, strict=True) if s == best])


def create(params: Params, context: Context) -> MaxScorePicker:
    return MaxScorePicker(context.rng)
