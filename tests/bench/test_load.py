from __future__ import annotations

import math

import numpy as np
import pytest

from modelyard.bench.load import LoadLevel, arrival_times, parse_levels


def _cv(times: np.ndarray) -> float:
    gaps = np.diff(np.concatenate([[0.0], times]))
    return float(np.std(gaps) / np.mean(gaps))


def test_poisson_arrivals_from_a_seed() -> None:
    n, rate = 4000, 5.0
    times = arrival_times(n, rate, 1.0, np.random.default_rng(7))
    assert len(times) == n and np.all(np.diff(times) >= 0)
    assert times[-1] == pytest.approx(n / rate)  # scaled so the run lasts n / rate, as vLLM
    assert np.mean(np.diff(times)) == pytest.approx(1 / rate, rel=0.01)
    assert _cv(times) == pytest.approx(1.0, abs=0.05)  # exponential gaps
    counts = np.histogram(times, bins=np.arange(0, n / rate + 1, 1.0))[0]  # arrivals per second ~ Poisson(rate)
    assert counts.mean() == pytest.approx(rate, rel=0.02)
    assert counts.var() == pytest.approx(rate, rel=0.15)
    assert np.array_equal(times, arrival_times(n, rate, 1.0, np.random.default_rng(7)))


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_burstiness_sets_the_spread(burstiness: float) -> None:
    times = arrival_times(4000, 2.0, burstiness, np.random.default_rng(1))
    assert _cv(times) == pytest.approx(1 / math.sqrt(burstiness), rel=0.08)


def test_infinite_rate_and_uniform_arrivals() -> None:
    assert not arrival_times(5, math.inf, 1.0, np.random.default_rng(0)).any()
    assert arrival_times(4, 2.0, math.inf, np.random.default_rng(0)) == pytest.approx([0.5, 1.0, 1.5, 2.0])
    with pytest.raises(ValueError):
        arrival_times(3, 1.0, 0.0, np.random.default_rng(0))


def test_sweeps() -> None:
    assert parse_levels("1,4,16", None) == [LoadLevel(1), LoadLevel(4), LoadLevel(16)]
    assert parse_levels(None, None) == [LoadLevel(1)]
    levels = parse_levels("8", "1,2,inf")
    assert [lv.label for lv in levels] == ["rate=1,c<=8", "rate=2,c<=8", "rate=inf,c<=8"]
    assert parse_levels(None, "0.5")[0].label == "rate=0.5"
    with pytest.raises(ValueError):
        parse_levels("1,2", "1")
    with pytest.raises(ValueError):
        parse_levels("0", None)
