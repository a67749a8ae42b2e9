from __future__ import annotations

import random

from modelyard.routing.contracts import Context
from modelyard.routing.plugins import max_score
from tests.replicas import replicas, request


def test_highest_score_wins_and_ties_are_broken_at_random() -> None:
    picker = max_score.create(max_score.Params(), Context("m", rng=random.Random(1)))
    endpoints = replicas(3)
    assert picker.pick(request(), endpoints, [0.2, 0.9, 0.5]).replica == 1
    picks = {picker.pick(request(), endpoints, [0.7, 0.1, 0.7]).replica for _ in range(50)}
    assert picks == {0, 2}
