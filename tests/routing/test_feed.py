"""modelyard/routing/feed.py: the parent's endpoint table applied to a worker's, ejections going both ways."""

from __future__ import annotations

import orjson

from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState
from modelyard.routing.feed import Held, adopt_ejection, apply, ejection, snapshot


def parent_table(*replicas: int) -> EndpointTable:
    table = EndpointTable()
    for replica in replicas:
        table.add(Endpoint("chat", replica, f"http://127.0.0.1:{9000 + replica}", ReplicaState.READY,
                           headers={"Authorization": "Bearer x"}, in_flight=5, consecutive_failures=2))
    return table


def sent(table: EndpointTable) -> list[dict[str, object]]:
    return list(orjson.loads(orjson.dumps(snapshot(table))))  # what crosses the pipe


def test_a_worker_gets_the_table_but_keeps_its_own_counters() -> None:
    parent, worker, held = parent_table(0, 1), EndpointTable(), Held()
    apply(worker, sent(parent), held, now=100.0)
    assert [(e.replica, e.url, e.state, e.headers, e.in_flight, e.consecutive_failures) for e in worker] == [
        (0, "http://127.0.0.1:9000", ReplicaState.READY, {"Authorization": "Bearer x"}, 0, 0),
        (1, "http://127.0.0.1:9001", ReplicaState.READY, {"Authorization": "Bearer x"}, 0, 0)]
    mine = worker.of("chat")[0]
    mine.in_flight, mine.consecutive_failures = 3, 1
    parent.of("chat")[0].state = ReplicaState.RESTARTING
    parent.remove(parent.of("chat")[1])
    apply(worker, sent(parent), held, now=101.0)
    assert worker.of("chat") == [mine]
    assert (mine.state, mine.in_flight, mine.consecutive_failures) == (ReplicaState.RESTARTING, 3, 1)


def test_engine_metrics_a_worker_scraped_are_not_overwritten_by_a_parent_that_never_scraped() -> None:
    parent, worker, held = parent_table(0), EndpointTable(), Held()
    apply(worker, sent(parent), held, now=1.0)
    mine = worker.of("chat")[0]
    mine.waiting, mine.kv_usage, mine.scraped_at = 4, 0.5, 1.5
    apply(worker, sent(parent), held, now=2.0)
    assert (mine.waiting, mine.kv_usage, mine.scraped_at) == (4, 0.5, 1.5)


def test_an_ejection_in_a_worker_survives_a_stale_table_until_the_parent_has_it() -> None:
    parent, worker, held = parent_table(0, 1), EndpointTable(), Held()
    apply(worker, sent(parent), held, now=10.0)
    mine = worker.of("chat")[0]
    mine.ejected_until, mine.ejections = 15.0, 1
    held[("chat", 0)] = 15.0
    report = ejection(mine)
    apply(worker, sent(parent), held, now=10.1)  # sent before the parent read the report
    assert mine.ejected_until == 15.0 and held
    assert adopt_ejection(parent, report, now=10.1) and not adopt_ejection(parent, report, now=10.1)
    assert parent.of("chat")[0].ejected_until == 15.0
    apply(worker, sent(parent), held, now=10.2)
    assert not held and mine.ejected_until == 15.0
    parent.of("chat")[0].ejected_until, parent.of("chat")[0].ejections = 0.0, 0  # the supervisor's probe passed
    mine.consecutive_failures = 2
    apply(worker, sent(parent), held, now=11.0)
    assert (mine.ejected_until, mine.ejections, mine.consecutive_failures) == (0.0, 0, 0)
    assert mine.routable(11.0)


def test_an_expired_held_ejection_is_let_go() -> None:
    parent, worker, held = parent_table(0), EndpointTable(), Held()
    apply(worker, sent(parent), held, now=10.0)
    worker.of("chat")[0].ejected_until = 12.0
    held[("chat", 0)] = 12.0
    apply(worker, sent(parent), held, now=13.0)
    assert not held and worker.of("chat")[0].ejected_until == 0.0


def test_the_ejection_cap_holds_across_workers() -> None:
    """Two workers each eject one of a model's two replicas: the parent adopts the first report only, and the
    worker whose own ejection has no room left in the parent's table lets it go (both were out in both workers)."""
    parent, first, second = parent_table(0, 1), EndpointTable(), EndpointTable()
    held_first, held_second = Held(), Held()
    apply(first, sent(parent), held_first, now=10.0)
    apply(second, sent(parent), held_second, now=10.0)
    for worker, held, replica in ((first, held_first, 0), (second, held_second, 1)):
        mine = worker.of("chat")[replica]
        mine.ejected_until, mine.ejections = 15.0, 1
        held[("chat", replica)] = 15.0
    assert adopt_ejection(parent, ejection(first.of("chat")[0]), now=10.1)
    assert not adopt_ejection(parent, ejection(second.of("chat")[1]), now=10.1)  # past the cap: refused
    assert [e.routable(10.2) for e in parent.of("chat")] == [False, True]
    for worker, held in ((first, held_first), (second, held_second)):
        apply(worker, sent(parent), held, now=10.2)
        assert [e.routable(10.2) for e in worker.of("chat")] == [False, True]
        assert not held
