from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelyard.routing.contracts import Context
from modelyard.routing.plugins import saturation_filter
from tests.replicas import replicas, request


def make(**params: object) -> saturation_filter.SaturationFilter:
    return saturation_filter.create(saturation_filter.Params.model_validate(params), Context("m"))


def test_drops_replicas_past_waiting_kv_or_in_flight_bounds() -> None:
    endpoints = replicas(4, waiting=[0, 5, 0, 0], kv_usage=[0.1, 0.1, 0.97, 0.2], in_flight=[0, 0, 0, 9])
    kept = make(max_waiting=4, max_kv_usage=0.95, max_in_flight=8).filter(request(), endpoints)
    assert [e.replica for e in kept] == [0]


def test_requests_sent_since_the_scrape_count_while_the_engine_queues() -> None:
    # the engine said 3 waiting at the scrape; 2 more went there since: 5 > 4
    busy = replicas(2, waiting=[3, 0], in_flight=[7, 7], in_flight_at_scrape=[5, 5])
    assert [e.replica for e in make(max_waiting=4).filter(request(), busy)] == [1]


def test_keeps_everyone_when_all_are_saturated() -> None:
    endpoints = replicas(3, waiting=[9, 10, 11])
    assert make(max_waiting=4).filter(request(), endpoints) == endpoints


def test_params_are_typed_and_closed() -> None:
    with pytest.raises(ValidationError):
        saturation_filter.Params.model_validate({"max_waiting": -1})
    with pytest.raises(ValidationError):
        saturation_filter.Params.model_validate({"max_queue": 3})
