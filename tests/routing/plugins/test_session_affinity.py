from __future__ import annotations

from modelyard.routing.contracts import Context
from modelyard.routing.plugins import session_affinity
from tests.replicas import replicas, request


def make(**params: object) -> session_affinity.SessionAffinityScorer:
    return session_affinity.create(session_affinity.Params.model_validate(params), Context("m"))


def test_a_session_sticks_to_the_replica_it_last_used() -> None:
    scorer, endpoints = make(), replicas(3)
    assert scorer.score(request(session="s1"), endpoints) == [0.0, 0.0, 0.0]
    scorer.routed(request(session="s1"), endpoints[2])
    assert scorer.score(request(session="s1"), endpoints) == [0.0, 0.0, 1.0]
    assert scorer.score(request(session="s2"), endpoints) == [0.0, 0.0, 0.0]
    assert scorer.score(request(), endpoints) == [0.0, 0.0, 0.0]


def test_spills_over_when_its_replica_is_saturated_and_then_moves() -> None:
    scorer, endpoints = make(max_waiting=2), replicas(2)
    scorer.routed(request(session="s"), endpoints[0])
    endpoints[0].waiting = 5
    assert scorer.score(request(session="s"), endpoints) == [0.0, 0.0]
    scorer.routed(request(session="s"), endpoints[1])  # where the other scorers sent it
    endpoints[0].waiting = 0
    assert scorer.score(request(session="s"), endpoints) == [0.0, 1.0]


def test_a_restarted_replica_is_not_the_sessions_anymore() -> None:
    scorer, endpoints = make(), replicas(2)
    scorer.routed(request(session="s"), endpoints[0])
    endpoints[0].url = "http://127.0.0.1:1234"
    assert scorer.score(request(session="s"), endpoints) == [0.0, 0.0]


def test_sessions_are_a_bounded_lru() -> None:
    scorer, endpoints = make(max_sessions=3), replicas(2)
    for name in ("a", "b", "c"):
        scorer.routed(request(session=name), endpoints[0])
    scorer.routed(request(session="a"), endpoints[1])  # a is used again: b is now the oldest
    scorer.routed(request(session="d"), endpoints[0])
    assert list(scorer.sessions) == ["c", "a", "d"]
