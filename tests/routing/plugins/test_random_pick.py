from __future__ import annotations

import random

from modelyard.routing.contracts import Context
from modelyard.routing.plugins import random_pick
from tests.replicas import replicas, request


def test_uniform_whatever_the_scores() -> None:
    picker = random_pick.create(random_pick.Params(), Context("m", rng=random.Random(5)))
    endpoints = replicas(3)
    picks = [picker.pick(request(), endpoints, [1.0, 0.0, 0.0]).replica for _ in range(300)]
    assert all(picks.count(r) > 50 for r in range(3))
