"""Picks the replica with the highest score; ties are broken at random."""

from __future__ import annotations

import random
from collections.abc import Sequence

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint

TYPE = "max-score"
KIND = "picker"
TIE = 1e-9


class Params(PluginParams):
    pass


class MaxScorePicker:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, request: RouteRequest, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> Endpoint:
        best = max(scores)
        top = [e for e, s in zip(endpoints, scores, strict=True) if s >= best - TIE]
        return top[0] if len(top) == 1 else self.rng.choice(top)


def create(params: Params, context: Context) -> MaxScorePicker:
    return MaxScorePicker(context.rng)
