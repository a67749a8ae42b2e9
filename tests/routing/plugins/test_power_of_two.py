from __future__ import annotations

import random

from modelyard.routing.contracts import Context
from modelyard.routing.plugins import power_of_two
from tests.replicas import replicas, request


def test_the_better_of_two_random_draws() -> None:
    picker = power_of_two.create(power_of_two.Params(), Context("m", rng=random.Random(3)))
    endpoints = replicas(4)
    scores = [0.0, 0.1, 0.2, 0.3]
    picks = [picker.pick(request(), endpoints, scores).replica for _ in range(200)]
    assert 0 not in picks  # the worst one always loses its draw
    assert set(picks) == {1, 2, 3}
    assert picks.count(3) > picks.count(1)
    assert picker.pick(request(), endpoints[:1], [0.0]).replica == 0
