from __future__ import annotations

from modelyard.gateway.failover import OutlierDetector, RetryBudget
from modelyard.routing.endpoints import Endpoint, ReplicaState
from tests.replicas import replicas


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_retry_budget_caps_retries_to_a_share_of_requests() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_per_window=1, window_s=10, clock=clock)
    for _ in range(10):
        budget.request()
    assert [budget.try_retry() for _ in range(4)] == [True, True, True, False]
    clock.now += 11
    assert budget.try_retry() is True


def test_consecutive_failures_eject_for_a_growing_time_and_success_resets() -> None:
    clock = Clock()
    detector = OutlierDetector(threshold=2, base_s=5, max_s=15, clock=clock)
    endpoint = Endpoint(model="m", replica=0, url="u", state=ReplicaState.READY)
    detector.failure(endpoint)
    assert endpoint.routable(clock.now)
    detector.failure(endpoint)
    assert not endpoint.routable(clock.now) and endpoint.ejected_until == clock.now + 5
    clock.now += 6
    assert endpoint.routable(clock.now)
    detector.failure(endpoint, hung=True)
    assert endpoint.ejected_until == clock.now + 10
    clock.now += 11
    detector.success(endpoint)
    assert endpoint.ejections == 0 and endpoint.routable(clock.now)


def test_the_retry_budget_remembers_only_its_window_without_retries() -> None:
    clock = Clock()
    budget = RetryBudget(window_s=10, clock=clock)
    for _ in range(1_000):  # 10 requests a second for 100 s, never a retry
        budget.request()
        clock.now += 0.1
    assert len(budget._requests) <= 101


def test_at_most_half_the_ready_replicas_are_ejected_and_one_always_stays() -> None:
    clock = Clock()
    detector = OutlierDetector(threshold=1, clock=clock)
    peers = replicas(4)
    for endpoint in peers:
        detector.failure(endpoint, peers=peers)  # a fault on every replica (20% injected 503s, say)
    assert sum(1 for e in peers if not e.routable(clock.now)) == 2  # half of 4
    (alone,) = replicas(1)
    for _ in range(5):
        detector.failure(alone, hung=True, peers=[alone])
    assert alone.routable(clock.now)  # the last replica is never taken out: degraded, not blackholed
