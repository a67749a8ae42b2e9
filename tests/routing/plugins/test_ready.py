from __future__ import annotations

from modelyard.routing.contracts import Context
from modelyard.routing.endpoints import ReplicaState
from modelyard.routing.plugins import ready
from tests.replicas import replicas, request


def test_keeps_ready_replicas_that_are_not_ejected() -> None:
    endpoints = replicas(4, state=[ReplicaState.READY, ReplicaState.STARTING, ReplicaState.READY,
                                   ReplicaState.READY], ejected_until=[0.0, 0.0, 150.0, 50.0])
    plugin = ready.create(ready.Params(), Context("m", clock=lambda: 100.0))
    assert [e.replica for e in plugin.filter(request(), endpoints)] == [0, 3]
