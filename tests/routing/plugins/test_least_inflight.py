from __future__ import annotations

from modelyard.routing.contracts import Context
from modelyard.routing.plugins import least_inflight
from tests.replicas import replicas, request


def test_fewest_in_flight_scores_one_most_scores_zero() -> None:
    scorer = least_inflight.create(least_inflight.Params(), Context("m"))
    assert scorer.score(request(), replicas(3, in_flight=[4, 0, 2])) == [0.0, 1.0, 0.5]
    assert scorer.score(request(), replicas(2, in_flight=3)) == [1.0, 1.0]
