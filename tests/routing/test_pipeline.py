from __future__ import annotations

import random
from typing import Any

import pytest
import yaml

from modelyard.observability.metrics import RoutingTimings
from modelyard.routing.contracts import RouteRequest
from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState
from modelyard.routing.pipeline import Router
from modelyard.spec import parse_spec
from tests.replicas import replicas, request

SYSTEM = "You answer questions about the warehouse inventory, briefly and precisely. " * 12


def router_for(routing: dict[str, Any] | None = None, profile: str = "default", count: int = 4,
               **fields: Any) -> tuple[Router, EndpointTable, RoutingTimings]:
    urls = [f"http://127.0.0.{i + 1}:9000" for i in range(count)]
    spec: dict[str, Any] = {"models": [{"name": "m", "engine": "openai", "urls": urls, "replicas": count,
                                        "routing": profile}]}
    if routing:
        spec["routing"] = routing
    table = EndpointTable()
    for endpoint in replicas(count, **fields):
        table.add(endpoint)
    timings = RoutingTimings()
    return Router(parse_spec(yaml.safe_dump(spec)), table, timings, rng=random.Random(7)), table, timings


def replica_of(endpoint: Endpoint | None) -> int | None:
    return endpoint.replica if endpoint is not None else None


def test_default_profile_keeps_a_shared_prefix_on_one_replica() -> None:
    router, _, _ = router_for()
    picks = {replica_of(router.pick(request(SYSTEM + f"question {n}?"))) for n in range(10)}
    assert len(picks) == 1 and None not in picks


def test_default_profile_spills_a_hot_prefix_off_a_saturated_replica() -> None:
    router, table, _ = router_for()
    first = router.pick(request(SYSTEM + "q0"))
    assert first is not None
    first.waiting = 10  # the engine queues
    second = router.pick(request(SYSTEM + "q1"))
    assert second is not None and second is not first


def test_weights_are_normalized_and_decide_between_scorers() -> None:
    routing = {"profiles": [{"name": "p", "filters": ["ready"],
                             "scorers": [{"plugin": "least-inflight", "weight": 3}, {"plugin": "load", "weight": 1}],
                             "picker": "max-score"}]}
    router, table, _ = router_for(routing, "p", count=2, in_flight=[0, 1], running=[6, 0])
    pipeline = router.pipelines["m"]
    endpoints = table.of("m")
    totals = pipeline.weighted(request(), endpoints)
    assert all(0.0 <= t <= 1.0 for t in totals)
    # least-inflight: [1, 0]; load (engine queue 6 vs 1): [0, 1]; weights 3/4 and 1/4
    assert totals == pytest.approx([0.75 * 1 + 0.25 * 0, 0.75 * 0 + 0.25 * 1])
    assert router.pick(request()) is endpoints[0]


def test_filters_run_in_order_after_ready_and_exclusions() -> None:
    router, table, _ = router_for(count=3, waiting=[0, 9, 0])
    endpoints = table.of("m")
    endpoints[0].state = ReplicaState.UNHEALTHY
    assert router.pick(request("x"), exclude=[]) is endpoints[2]
    assert router.pick(request("x"), exclude=[endpoints[2]]) is endpoints[1]  # saturated, but the only one
    assert router.pick(request("x"), exclude=endpoints[1:]) is None
    assert router.pick(RouteRequest("unknown")) is None


def test_round_robin_least_load_and_random_profiles() -> None:
    router, _, _ = router_for(profile="round-robin", count=3)
    assert [e.replica for e in (router.pick(request("same")) for _ in range(4)) if e] == [0, 1, 2, 0]
    router, table, _ = router_for(profile="least-load", count=3, in_flight=[3, 1, 2])
    assert router.pick(request()) is table.of("m")[1]
    router, _, _ = router_for(profile="random", count=3)
    assert {replica_of(router.pick(request("same"))) for _ in range(60)} == {0, 1, 2}


def test_session_profile_sticks_and_each_model_has_its_own_state() -> None:
    router, table, _ = router_for(profile="session", count=4)
    first = router.pick(request(session="alice"))
    assert all(router.pick(request(session="alice")) is first for _ in range(5))
    other = router.pipelines["m"]
    assert other.stateful  # the session scorer hears where requests went


def test_every_plugin_call_and_decision_is_timed() -> None:
    router, _, timings = router_for()
    router.pick(request(SYSTEM))
    text = "".join(str(s) for family in timings.collect() for s in family.samples)
    for plugin in ("ready", "saturation-filter", "prefix-affinity", "load", "max-score"):
        assert f"'plugin': '{plugin}'" in text
    decisions = [s for family in timings.collect() for s in family.samples
                 if s.name == "modelyard_routing_decision_seconds_count"]
    assert decisions and decisions[0].value == 1.0
