from __future__ import annotations

from modelyard.gateway.health import health_body, model_health
from modelyard.routing.endpoints import EndpointTable, ReplicaState
from tests.replicas import replicas


def test_health_tells_ready_ejected_and_draining_apart() -> None:
    table = EndpointTable()
    for endpoint in replicas(4):
        table.add(endpoint)
    first, second, third, _ = table.of("m")
    first.ejected_until = 200.0  # ejected by the gateway until then
    second.state = ReplicaState.DRAINING
    third.state = ReplicaState.UNHEALTHY
    entry = model_health(table, "m", {"desired": 4, "strategy": "fixed"}, 4, now=100.0)
    assert entry == {"ready": 1, "ejected": 1, "draining": 1, "unhealthy": 1, "replicas": 4, "strategy": "fixed"}
    assert health_body({"m": entry}) == ({"status": "ok", "models": {"m": entry}}, True)


def test_a_model_whose_ready_replicas_are_all_ejected_is_degraded() -> None:
    table = EndpointTable()
    (only,) = replicas(1)
    table.add(only)
    only.ejected_until = 200.0  # the parent adopted an ejection (the cap is per worker)
    entry = model_health(table, "m", {}, 1, now=100.0)
    assert entry["ready"] == 0 and entry["ejected"] == 1
    assert health_body({"m": entry})[1] is False
    assert model_health(table, "m", {}, 1, now=300.0)["ready"] == 1  # the ejection over
