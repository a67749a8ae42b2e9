from __future__ import annotations

from modelyard.routing import Endpoint, EndpointTable, ReplicaState, RoundRobinRouter


def table_of(*states: ReplicaState) -> EndpointTable:
    table = EndpointTable()
    for index, state in enumerate(states):
        table.add(Endpoint(model="m", replica=index, url=f"http://127.0.0.1:{9000 + index}", state=state))
    return table


def test_round_robin_over_ready_replicas_only() -> None:
    table = table_of(ReplicaState.READY, ReplicaState.STARTING, ReplicaState.READY)
    router = RoundRobinRouter(table)
    picks = [router.pick("m") for _ in range(4)]
    assert [p.replica for p in picks if p] == [0, 2, 0, 2]


def test_exclusion_and_nothing_ready() -> None:
    table = table_of(ReplicaState.READY, ReplicaState.RESTARTING)
    router = RoundRobinRouter(table)
    first = router.pick("m")
    assert first is not None
    assert router.pick("m", exclude=[first]) is None
    assert router.pick("other") is None
