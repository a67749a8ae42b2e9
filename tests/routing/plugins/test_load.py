from __future__ import annotations

import random

import pytest

from modelyard.routing.contracts import Context
from modelyard.routing.plugins import load
from tests.replicas import replicas, request


def test_engine_queue_and_fresh_in_flight_both_count() -> None:
    scorer = load.create(load.Params(kv_weight=0), Context("m"))
    # replica 0: 2 in flight through us; replica 1: the engine runs 6 (other clients); replica 2: idle
    endpoints = replicas(3, in_flight=[2, 0, 0], running=[0, 6, 0])
    scores = scorer.score(request(), endpoints)
    assert scores[2] == 1.0 and scores[1] == 0.0 and 0.0 < scores[0] < 1.0


def test_a_request_that_ended_after_the_scrape_counted_it_does_not_make_its_replica_look_idler_than_idle() -> None:
    scorer = load.create(load.Params(kv_weight=0), Context("m"))
    # replica 0: one request was sent after the engine counted its requests (0) and before the answer came back
    # (so it is in in_flight_at_scrape), and has ended since
    endpoints = replicas(2, in_flight=[0, 0], running=[0, 0])
    endpoints[0].in_flight_at_scrape = 1
    assert scorer.score(request(), endpoints) == [1.0, 1.0]  # a tie, as between two idle replicas


def test_waiting_requests_weigh_more_than_running_ones() -> None:
    scorer = load.create(load.Params(kv_weight=0, waiting_weight=1.0), Context("m"))
    endpoints = replicas(2, running=[4, 2], waiting=[0, 2])
    assert scorer.score(request(), endpoints) == [1.0, 0.0]


def test_kv_usage_breaks_ties_in_queue() -> None:
    scorer = load.create(load.Params(kv_weight=0.5), Context("m"))
    scores = scorer.score(request(), replicas(2, running=1, kv_usage=[0.9, 0.1]))
    assert scores[1] > scores[0]
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_the_fast_path_equals_the_plain_definition() -> None:
    rng = random.Random(4)
    endpoints = replicas(64)
    for e in endpoints:
        e.in_flight, e.in_flight_at_scrape = rng.randint(0, 20), rng.randint(0, 20)
        e.running, e.waiting, e.kv_usage = rng.randint(0, 30), rng.randint(0, 4), rng.random()
    params = load.Params(waiting_weight=0.5, kv_weight=0.3)
    queues = [load.queue(e, params.waiting_weight, params.kv_weight) for e in endpoints]
    low, high = min(queues), max(queues)
    plain = [(high - q) / (high - low) for q in queues]
    assert load.create(params, Context("m")).score(request(), endpoints) == pytest.approx(plain)
