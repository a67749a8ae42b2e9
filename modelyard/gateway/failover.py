"""Failures classified before they are counted, retries that cannot multiply an overload, and passive outlier
ejection.

Only what says the replica is unwell counts towards retry and ejection: a refused or reset connection, a timeout
(the relay's exceptions), or an answer of 502, 503 or 504 (`replica_unwell`). Any other answer is the engine's word
about the request itself (a 4xx, a 501 "not supported", a 500 with its JSON error): it goes back to the client as
it is, is never retried elsewhere and never ejects the replica, so a client cannot take a replica out of service.

A retry is allowed while retries in the last `window_s` stay under `ratio` of the requests in that window
(plus `min_per_window`), as Envoy's and Linkerd's retry budgets do. A replica that fails `threshold` times in
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

import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from modelyard.routing.endpoints import MAX_EJECTED_SHARE, Endpoint, may_eject

UNWELL_STATUSES = frozenset({502, 503, 504})
# how a stream that had started ends when its replica broke off or went silent (gateway/relay.py's outcome errors):
# counted as failures too, never retried (tokens went out already)
BROKEN_STREAM = frozenset({"timeout", "upstream_error"})


def replica_unwell(status: int) -> bool:
    """Whether an engine's answer says the replica cannot serve (retry elsewhere, count towards ejection)."""
    return status in UNWELL_STATUSES


class RetryBudget:
    def __init__(self, ratio: float = 0.2, min_per_window: int = 3, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio, self.min_per_window, self.window_s, self.clock = ratio, min_per_window, window_s, clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        for events in (self._requests, self._retries):
            while events and events[0] < now - self.window_s:
                events.popleft()

    def request(self) -> None:
        now = self.clock()
        self._requests.append(now)
        self._trim(now)  # without retries nothing else trims: the window would grow by one per request forever

    def try_retry(self) -> bool:
        now = self.clock()
        self._trim(now)
        if len(self._retries) >= self.min_per_window + self.ratio * len(self._requests):
            return False
        self._retries.append(now)
        return True


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
