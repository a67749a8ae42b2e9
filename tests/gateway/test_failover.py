from __future__ import annotations

from pathlib import Path

import httpx

from modelyard.gateway.failover import OutlierDetector, RetryBudget, backoff_s
from modelyard.routing.endpoints import Endpoint, ReplicaState
from tests.cluster import API_KEY, Cluster
from tests.replicas import replicas
from tests.upstream import Upstream


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_retry_budget_caps_retries_in_progress_to_a_share_of_requests_in_progress() -> None:
    budget = RetryBudget(percent=0.2, min_concurrent=2)
    assert [budget.try_retry("m", active=20) for _ in range(5)] == [True, True, True, True, False]  # 20% of 20
    assert budget.try_retry("other", active=1) is True  # each model its own budget
    budget.retried("m")
    assert budget.try_retry("m", active=20) is True and budget.try_retry("m", active=20) is False
    for _ in range(4):
        budget.retried("m")
    assert [budget.try_retry("m", active=1) for _ in range(3)] == [True, True, False]  # the floor: min_concurrent


def test_backoff_is_jittered_under_an_exponential_cap() -> None:
    waits = [[backoff_s(retry) for _ in range(200)] for retry in (1, 2, 3, 8)]
    assert all(0 <= w <= 0.025 for w in waits[0]) and max(waits[1]) > 0.025 >= min(waits[1])
    assert max(waits[2]) <= 0.1 and all(w <= 0.25 for w in waits[3]) and len(set(waits[3])) > 100


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


def _serve(detector: OutlierDetector, peers: list[Endpoint], rounds: int, fails: dict[int, int]) -> None:
    """`rounds` requests to each replica; replica i fails one request in `fails[i]` (never two in a row)."""
    for n in range(rounds):
        for endpoint in peers:
            every = fails.get(endpoint.replica)
            if every and n % every == 0:
                detector.failure(endpoint, peers=peers)
            else:
                detector.success(endpoint, peers=peers)


def test_a_replica_whose_success_rate_is_well_below_its_peers_is_ejected() -> None:
    clock = Clock()
    counted: list[int] = []  # the gateway's ejections metric
    detector = OutlierDetector(clock=clock, interval_s=10, min_requests=50,
                               on_eject=lambda e: counted.append(e.replica))
    peers = replicas(3)
    _serve(detector, peers, 60, {0: 3})  # replica 0 fails 1 in 3: never 3 in a row, a third of its answers wrong
    assert all(e.routable(clock.now) for e in peers)  # consecutive failures alone never eject it
    clock.now += 10
    detector.success(peers[1], peers=peers)  # the interval is judged on the next answer after it ends
    assert not peers[0].routable(clock.now) and peers[1].routable(clock.now) and peers[2].routable(clock.now)
    assert counted == [0]


def test_success_rates_eject_nothing_when_every_replica_fails_alike_or_volume_is_low() -> None:
    clock = Clock()
    detector = OutlierDetector(clock=clock, interval_s=10, min_requests=50)
    peers = replicas(2)
    _serve(detector, peers, 100, {0: 5, 1: 5})  # 20% on every replica
    clock.now += 10
    _serve(detector, peers, 30, {0: 2})  # half of replica 0's fail, but under the minimum volume
    clock.now += 10
    detector.success(peers[1], peers=peers)
    assert all(e.routable(clock.now) for e in peers)


def test_success_rate_ejection_keeps_the_cap() -> None:
    clock = Clock()
    ejected: list[int] = []

    class Reporting(OutlierDetector):
        def ejected(self, endpoint: Endpoint) -> None:
            ejected.append(endpoint.replica)

    detector = Reporting(clock=clock, interval_s=10, min_requests=50)
    peers = replicas(5)
    _serve(detector, peers, 60, {0: 2, 1: 2, 2: 3})  # three of five replicas well below the other two
    clock.now += 10
    detector.success(peers[3], peers=peers)
    assert sorted(ejected) == [0, 1]  # half of 5, the worst first; each ejection reported
    assert sum(1 for e in peers if e.routable(clock.now)) == 3


def test_streams_broken_by_a_replica_eject_it_and_health_says_so(tmp_path: Path) -> None:
    """Streams that a replica breaks off mid-way count against it (they were not counted at all): it is ejected,
    and /health tells it apart from the replica that serves (it said ready: 2)."""
    with Upstream() as broken, Upstream() as fine:
        broken.mode = "die_mid_stream"
        model = {"name": "m", "engine": "openai", "urls": [broken.url, fine.url], "replicas": 2,
                 "timeouts": {"first_byte_s": 5, "between_chunks_s": 5, "total_s": 10}}
        cluster = Cluster(tmp_path, [model]).start()
        try:
            body = {"model": "m", "prompt": "hi", "max_tokens": 8, "stream": True}
            headers = {"Authorization": f"Bearer {API_KEY}"}
            health: dict[str, int] = {}
            for _ in range(150):  # one worker per core, each counting its own failures in a row: 8 cores need ~40
                reply = httpx.post(cluster.url + "/v1/completions", json=body, headers=headers, timeout=30)
                assert reply.status_code == 200
                health = httpx.get(cluster.url + "/health", timeout=10).json()["models"]["m"]
                if health.get("ejected"):
                    break
            assert health["ready"] == 1 and health["ejected"] == 1, health
        finally:
            cluster.stop()
