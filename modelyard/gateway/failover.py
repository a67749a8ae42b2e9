"""Failures classified before they are counted, retries that cannot multiply an overload, and passive outlier
ejection.

Only what says the replica is unwell counts towards retry and ejection: a refused or reset connection, a timeout
(the relay's exceptions), or an answer of 502, 503 or 504 (`replica_unwell`). Any other answer is the engine's word
about the request itself (a 4xx, a 501 "not supported", a 500 with its JSON error): it goes back to the client as
it is, is never retried elsewhere and never ejects the replica, so a client cannot take a replica out of service.

A retry is allowed while the model's retries in progress stay under `percent` of its requests in progress, and
`min_concurrent` always (Envoy's retry budget, `budget_percent` 20; Envoy's floor is 3, which a worker with 15
requests in flight and 20% faults on every replica overran about once in 750 requests: 10 is Linkerd's floor of 10
retries a second, as retries in progress). A retry is in
progress from its backoff (full jitter, `backoff_s`) until its replica answers or fails, so the budget bounds the rate
of retries as well as their number: a fault on every replica (20% on each) is retried through, since its retries are
short and few at a time, while a model that fails everything gets at most its share of retries in flight. A request
makes up to `MAX_ATTEMPTS` attempts, on replicas it has not tried first, then again on one that failed (a fault that
comes and goes says little about the next attempt). A replica that fails `threshold` times in
a row is ejected for `base_s`, doubling on each further ejection up to `max_s`; the supervisor's probes and the
ejection's expiry bring it back, and one success resets it.

Besides failures in a row, success rates (Envoy's success-rate outlier detection): over each `interval_s` of a
model's traffic, the replicas that took at least `min_requests` are compared, and one whose success rate is below
the median of its peers' by more than `min_gap` is ejected too (Envoy compares with the mean less 1.9 standard
deviations, which says little over the 2-4 replicas of a model here: one bad replica of two is always exactly one
deviation away). A replica that fails 1 request in 3 is never 3 in a row for long, yet serves a third of its
requests wrong; a fault on every replica (20% on each) moves them all alike and ejects none. Both ways share the
cap on the ejected share.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modelyard.routing.endpoints import MAX_EJECTED_SHARE, Endpoint, may_eject

UNWELL_STATUSES = frozenset({502, 503, 504})
# how a stream that had started ends when its replica broke off or went silent (gateway/relay.py's outcome errors):
# counted as failures too, never retried (tokens went out already)
BROKEN_STREAM = frozenset({"timeout", "upstream_error"})
MAX_ATTEMPTS = 8  # 0.2^8: with 20% faults on every replica, 1 request in 390,000 fails every attempt
BACKOFF_BASE_S, BACKOFF_MAX_S = 0.025, 0.25


def replica_unwell(status: int) -> bool:
    """Whether an engine's answer says the replica cannot serve (retry elsewhere, count towards ejection)."""
    return status in UNWELL_STATUSES


class RetryBudget:
    """Retries in progress per model, against the model's requests in progress (`active`, given by the caller)."""

    def __init__(self, percent: float = 0.2, min_concurrent: int = 10) -> None:
        self.percent, self.min_concurrent = percent, min_concurrent
        self._retrying: dict[str, int] = {}  # by model: bounded by the models

    def try_retry(self, model: str, active: int) -> bool:
        retrying = self._retrying.get(model, 0)
        if retrying >= max(self.min_concurrent, self.percent * active):
            return False
        self._retrying[model] = retrying + 1
        return True

    def retried(self, model: str) -> None:
        """The retry's attempt answered or failed (or was abandoned): its place in the budget is free."""
        self._retrying[model] -= 1


def backoff_s(retry: int, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_MAX_S) -> float:
    """How long the `retry`-th retry (from 1) waits first: full jitter over an exponential (Envoy's 25 ms base,
    at most 10 times it), so that the retries of requests that failed together do not arrive together."""
    return random.uniform(0.0, min(cap_s, base_s * 2 ** (retry - 1)))


@dataclass(slots=True)
class _Tally:
    endpoint: Endpoint
    ok: int = 0
    failed: int = 0

    @property
    def rate(self) -> float:
        return self.ok / (self.ok + self.failed)


@dataclass(slots=True)
class _Interval:
    started: float
    tallies: dict[int, _Tally]  # by replica number: bounded by the model's replicas, emptied every interval


class OutlierDetector:
    """`max_ejected`: the share of a model's ready replicas that may be ejected at once (Envoy's
    max_ejection_percent); at least one always stays in, so a fault on every replica degrades, not blackholes.

    `ejected(endpoint)` is called after each ejection, whichever way it was decided (a subclass reports it; the
    gateway counts it through `on_eject`)."""

    def __init__(self, threshold: int = 3, base_s: float = 5.0, max_s: float = 120.0,
                 max_ejected: float = MAX_EJECTED_SHARE,
                 clock: Callable[[], float] = time.monotonic, interval_s: float = 10.0, min_requests: int = 50,
                 min_gap: float = 0.2, on_eject: Callable[[Endpoint], None] | None = None) -> None:
        self.threshold, self.base_s, self.max_s, self.clock = threshold, base_s, max_s, clock
        self.on_eject = on_eject  # the gateway's metric
        self.max_ejected = max_ejected
        self.interval_s, self.min_requests, self.min_gap = interval_s, min_requests, min_gap
        self._intervals: dict[str, _Interval] = {}  # by model

    def may_eject(self, endpoint: Endpoint, peers: Sequence[Endpoint]) -> bool:
        return may_eject(endpoint, peers, self.clock(), self.max_ejected)

    def failure(self, endpoint: Endpoint, hung: bool = False, peers: Sequence[Endpoint] | None = None) -> None:
        endpoint.consecutive_failures += 1
        self._count(endpoint, False, peers)
        if peers is not None and not self.may_eject(endpoint, peers):
            return  # counted; ejected once others are back
        if hung or endpoint.consecutive_failures >= self.threshold:
            self._eject(endpoint)

    def success(self, endpoint: Endpoint, peers: Sequence[Endpoint] | None = None) -> None:
        endpoint.consecutive_failures = 0
        self._count(endpoint, True, peers)
        if endpoint.ejected_until and endpoint.ejected_until <= self.clock():
            endpoint.ejections = 0
            endpoint.ejected_until = 0.0

    def ejected(self, endpoint: Endpoint) -> None:
        """Called after every ejection, whichever way it was decided."""
        if self.on_eject is not None:
            self.on_eject(endpoint)

    def _eject(self, endpoint: Endpoint) -> None:
        endpoint.ejections += 1
        seconds = min(self.base_s * 2 ** (endpoint.ejections - 1), self.max_s)
        endpoint.ejected_until = self.clock() + seconds
        endpoint.consecutive_failures = 0
        self.ejected(endpoint)

    def _count(self, endpoint: Endpoint, ok: bool, peers: Sequence[Endpoint] | None) -> None:
        """One answer towards the success rates of the replica's model; a closed interval is judged first."""
        if peers is None:  # no peers known (a lone caller): success rates are compared among peers only
            return
        now = self.clock()
        interval = self._intervals.get(endpoint.model)
        if interval is None or now - interval.started >= self.interval_s:
            if interval is not None:
                self._judge(interval, peers)
            interval = self._intervals[endpoint.model] = _Interval(now, {})
        tally = interval.tallies.get(endpoint.replica)
        if tally is None or tally.endpoint is not endpoint:
            tally = interval.tallies[endpoint.replica] = _Tally(endpoint)
        if ok:
            tally.ok += 1
        else:
            tally.failed += 1

    def _judge(self, interval: _Interval, peers: Sequence[Endpoint]) -> None:
        """Ejects, within the cap, the replicas whose success rate was well below their peers' over the interval."""
        judged = [t for t in interval.tallies.values() if t.ok + t.failed >= self.min_requests and t.endpoint.ready]
        if len(judged) < 2:
            return
        now = self.clock()
        for tally in sorted(judged, key=lambda t: t.rate):  # the worst first: they take the cap's places
            if tally.rate >= statistics.median(t.rate for t in judged if t is not tally) - self.min_gap:
                break  # sorted: the rest are closer still to their peers
            endpoint = tally.endpoint
            if endpoint.ejected_until <= now and self.may_eject(endpoint, peers):
                self._eject(endpoint)
