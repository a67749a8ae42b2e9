from __future__ import annotations

from modelyard.routing.contracts import Context
from modelyard.routing.plugins import round_robin
from tests.replicas import replicas, request


def test_takes_replicas_in_turn_whatever_the_scores() -> None:
    picker = round_robin.create(round_robin.Params(), Context("m"))
    endpoints = replicas(3)
    assert [picker.pick(request(), endpoints, [1.0, 0.0, 0.0]).replica for _ in range(5)] == [0, 1, 2, 0, 1]
