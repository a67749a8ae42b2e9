from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from modelyard.fleet.autoscaler import Memory, Proposal, Sample, decide
from modelyard.spec.scaling import ScalingSpec, SLOSpec

SLO = SLOSpec(ttft_p90_s=2.0, tpot_p90_s=0.05)


def scaling(**fields: Any) -> ScalingSpec:
    values: dict[str, Any] = {"min": 1, "max": 10}
    values.update(fields)
    return ScalingSpec(**values)


def at(t: float, ready: int = 1, load: int = 0, **fields: Any) -> Sample:
    values: dict[str, Any] = {"starting": 0, "queued": 0}
    values.update(fields)
    return Sample(at=t, ready=ready, in_flight=load, **values)


def times(start: float, stop: float, step: float = 1.0) -> list[float]:
    """start, start + step, ... up to and including stop."""
    count = round((stop - start) / step)
    return [start + i * step for i in range(count + 1)]


def run(
    spec: ScalingSpec,
    samples: list[Sample],
    *,
    slo: SLOSpec | None = None,
    target: float = 4.0,
    memory: Memory | None = None,
) -> tuple[list[Proposal], Memory]:
    memory = memory if memory is not None else Memory()
    proposals = []
    for sample in samples:
        proposal, memory = decide(spec, slo, target, memory, sample)
        proposals.append(proposal)
    return proposals, memory


def simulate(
    spec: ScalingSpec, loads: list[tuple[float, int]], ready: int, *, target: float = 4.0
) -> list[tuple[float, Proposal]]:
    """A model whose replicas become ready as soon as they are proposed; `loads`: (at, in flight)."""
    memory = Memory()
    history = []
    for t, load in loads:
        proposal, memory = decide(spec, None, target, memory, at(t, ready=ready, load=load))
        history.append((t, proposal))
        ready = proposal.replicas
    return history


def quiet_memory(now: float, delay_s: float = 30.0) -> Memory:
    """A model that has wanted 1 replica since well before the scale-down delay began."""
    return Memory(wanted=((now - delay_s - 1, 1),), last_active_at=now)


# steady load


def test_steady_load_wants_load_over_target() -> None:
    proposals, _ = run(scaling(), [at(t, ready=4, load=14) for t in times(0, 60, 0.5)])
    last = proposals[-1]
    assert {p.replicas for p in proposals} == {4}
    assert last.reason == "in flight 14.0 (60 s avg) / target 4 -> 4"
    assert not last.panic


def test_steady_load_above_capacity_scales_up_without_panic() -> None:
    proposals, _ = run(scaling(), [at(0, ready=3, load=20)])
    assert proposals[0].replicas == 5
    assert not proposals[0].panic


def test_target_argument_sets_the_ratio() -> None:
    proposals, _ = run(scaling(target_in_flight=2), [at(0, ready=2, load=16)], target=8)
    assert proposals[0].replicas == 2


def test_queued_requests_count_as_load() -> None:
    proposals, _ = run(scaling(), [at(0, ready=1, load=4, queued=4)])
    assert proposals[0].replicas == 2


def test_fractional_averages_round_up_exactly() -> None:
    proposals, _ = run(scaling(), [at(0, ready=3, load=7), at(1, ready=3, load=8)], target=2.5)
    assert [p.replicas for p in proposals] == [3, 3]
    proposals, _ = run(scaling(max=64), [at(0, ready=30, load=3)], target=0.1)
    assert proposals[0].replicas == 30


def test_stable_average_spans_the_stable_window_only() -> None:
    spec = scaling(panic_threshold=10)
    samples = [at(t, ready=1, load=0 if t < 30 else 8) for t in times(0, 59)]
    proposals, _ = run(spec, samples)
    assert proposals[-1].replicas == 1  # 30 samples of 0 and 30 of 8: 4.0 on average
    proposals, _ = run(spec, samples + [at(t, ready=1, load=8) for t in times(60, 89)])
    assert proposals[-1].replicas == 2  # the zeros have left the window
    assert proposals[-1].reason.startswith("in flight 8.0 (60 s avg)")


# panic


def burst(spec: ScalingSpec) -> list[tuple[float, Proposal]]:
    """6 in flight for a minute on 2 replicas, then 40 for 10 s, then nothing for two minutes."""
    loads = [(t, 6) for t in times(0, 59.5, 0.5)]
    loads += [(t, 40) for t in times(60, 69.5, 0.5)]
    loads += [(t, 0) for t in times(70, 190, 0.5)]
    return simulate(spec, loads, ready=2)


def test_burst_panics_and_scales_up_fast() -> None:
    history = burst(scaling())
    before = [p for t, p in history if t < 60]
    assert {p.replicas for p in before} == {2} and not any(p.panic for p in before)
    start, first = next((t, p) for t, p in history if p.panic)
    assert start == 61
    assert first.replicas == 4  # doubled: the up rate
    assert first.reason == "panic: 6 s avg 14.5 wants 4 (>= 2x 2)"
    reached = min(t for t, p in history if p.replicas == 10)
    assert reached <= 66  # the stable window alone would want 2 still


def test_no_scale_down_while_panicking() -> None:
    history = burst(scaling())
    first_trigger = min(t for t, p in history if p.reason.startswith("panic:"))
    last_trigger = max(t for t, p in history if p.reason.startswith("panic:"))
    during = [p for t, p in history if first_trigger <= t < last_trigger + 60]
    assert all(p.panic for p in during)
    assert [p.replicas for p in during] == sorted(p.replicas for p in during)  # never down
    assert any(p.reason.startswith("panic for") for p in during)
    after = [p for t, p in history if t >= last_trigger + 60]
    assert not any(p.panic for p in after)
    assert after[-1].replicas == 1


def test_panic_lasts_a_stable_window_after_its_last_trigger() -> None:
    spec = scaling(stable_window_s=10, panic_window_s=2, scale_up_rate=10)
    samples = [at(0, ready=1, load=12), at(5, ready=3, load=0), at(9.9, ready=3, load=0), at(10, ready=3, load=0)]
    proposals, memory = run(spec, samples)
    assert [p.panic for p in proposals] == [True, True, True, False]
    assert proposals[0].replicas == 3
    assert proposals[1].replicas == 3 and proposals[1].reason.startswith("panic for 5 s more")
    assert memory.panic_until == 10


def test_panic_is_rate_limited() -> None:
    proposals, _ = run(scaling(max=64), [at(0, ready=2, load=80)])
    assert proposals[0].replicas == 4 and proposals[0].panic
    assert "up rate: 4" in proposals[0].reason


def test_up_rate_adds_at_least_one() -> None:
    proposals, _ = run(scaling(scale_up_rate=1.1, panic_threshold=10), [at(0, ready=3, load=40)])
    assert proposals[0].replicas == 4


# credit for starting replicas


def test_starting_replicas_count_so_the_same_load_scales_up_once() -> None:
    spec = scaling(scale_up_rate=10)
    samples = [at(0, ready=1, load=16)] + [at(t, ready=1, starting=3, queued=16) for t in times(0.5, 30, 0.5)]
    proposals, memory = run(spec, samples)
    assert proposals[0].replicas == 4
    assert {p.replicas for p in proposals[1:]} == {4}
    assert memory.last_up_at == 0


def test_scale_up_adds_only_what_ready_plus_starting_lack() -> None:
    proposals, _ = run(scaling(), [at(0, ready=2, starting=1, load=20)])
    assert proposals[0].replicas == 5


# scale down


def test_scale_down_waits_the_delay() -> None:
    spec = scaling(stable_window_s=10, panic_window_s=2)
    proposals, _ = run(spec, [at(t, ready=4) for t in times(0, 30)])
    assert {p.replicas for p in proposals[:-1]} == {4}
    assert all(p.reason.startswith("held: ") for p in proposals[:-1])
    assert "fewer wanted for 29 s of 30 s" in proposals[-2].reason
    assert proposals[-1].replicas == 2  # at most halved
    assert "down rate: 2" in proposals[-1].reason


def test_scale_down_continues_one_halving_per_decision() -> None:
    spec = scaling(stable_window_s=10, panic_window_s=2)
    history = simulate(spec, [(t, 0) for t in times(0, 32)], ready=8)
    assert [p.replicas for t, p in history if t >= 29] == [8, 4, 2, 1]


@pytest.mark.parametrize(("ready", "rate", "expected"), [(8, 2.0, 4), (8, 4.0, 2), (3, 1.1, 2), (2, 2.0, 1)])
def test_scale_down_rate(ready: int, rate: float, expected: int) -> None:
    spec = scaling(scale_down_rate=rate)
    proposals, _ = run(spec, [at(100, ready=ready)], memory=quiet_memory(100))
    assert proposals[0].replicas == expected


def test_scale_down_goes_to_the_highest_wanted_within_the_delay() -> None:
    spec = scaling(scale_down_rate=10)
    memory = Memory(wanted=((60, 1), (75, 3), (85, 1)), last_active_at=100)
    proposals, _ = run(spec, [at(100, ready=6)], memory=memory)
    assert proposals[0].replicas == 3
    assert "3 wanted within 30 s" in proposals[0].reason


def test_a_spike_restarts_the_scale_down_delay() -> None:
    spec = scaling(stable_window_s=1, panic_window_s=1)
    samples = [at(t, ready=4, load=16 if t == 20 else 0) for t in times(0, 51)]
    proposals, _ = run(spec, samples)
    assert {p.replicas for p in proposals[:51]} == {4}
    assert "4 wanted within 30 s" in proposals[50].reason
    assert proposals[51].replicas == 2


def test_no_scale_down_soon_after_a_scale_up() -> None:
    memory = dataclasses.replace(quiet_memory(100), last_up_at=80)
    proposals, _ = run(scaling(), [at(100, ready=4)], memory=memory)
    assert proposals[0].replicas == 4
    assert proposals[0].reason.startswith("held: ") and "scaled up 20 s ago" in proposals[0].reason


def test_zero_delay_scales_down_on_the_first_decision() -> None:
    proposals, memory = run(scaling(scale_down_delay_s=0), [at(0, ready=4)])
    assert proposals[0].replicas == 2
    assert memory.last_down_at == 0


# scale to zero and activation


def test_scale_to_zero_after_idle() -> None:
    spec = scaling(min=0)
    proposals, _ = run(spec, [at(t, ready=1) for t in times(0, 300, 10)])
    assert {p.replicas for p in proposals[:-1]} == {1}
    assert "keeping 1: idle 290 s of 300 s" in proposals[-2].reason
    assert proposals[-1].replicas == 0
    assert proposals[-1].reason == "idle 300 s: to zero"


def test_scale_to_zero_skips_the_down_rate() -> None:
    proposals, _ = run(scaling(min=0), [at(0, ready=4), at(300, ready=4)])
    assert [p.replicas for p in proposals] == [4, 0]


def test_arrivals_restart_the_idle_clock() -> None:
    spec = scaling(min=0)
    samples = [at(t, ready=1, arrivals=1 if t == 200 else 0) for t in times(0, 500, 10)]
    proposals, memory = run(spec, samples)
    assert {p.replicas for p in proposals[:-1]} == {1}
    assert proposals[-1].replicas == 0
    assert memory.last_active_at == 200


def test_min_one_never_goes_to_zero() -> None:
    proposals, _ = run(scaling(min=1), [at(t, ready=1) for t in times(0, 1000, 10)])
    assert {p.replicas for p in proposals} == {1}


def test_activation_from_zero_with_one_arrival() -> None:
    memory = Memory(last_down_at=99, last_active_at=0, wanted=((99, 0),))
    proposals, _ = run(scaling(min=0), [at(100, ready=0, arrivals=1)], memory=memory)
    assert proposals[0].replicas == 1
    assert proposals[0].reason == "activation at zero: 0 waiting, 1 arrived -> 1"


def test_activation_from_zero_with_a_held_request() -> None:
    proposals, _ = run(scaling(min=0), [at(0, ready=0, queued=1)])
    assert proposals[0].replicas == 1
    assert proposals[0].reason.startswith("activation")


def test_activation_follows_the_panic_window_within_the_up_rate() -> None:
    proposals, _ = run(scaling(min=0, scale_up_rate=10), [at(0, ready=0, queued=20)])
    assert proposals[0].replicas == 5 and proposals[0].panic
    assert "panic: 6 s avg 20.0 wants 5" in proposals[0].reason
    proposals, _ = run(scaling(min=0), [at(0, ready=0, queued=20)])
    assert proposals[0].replicas == 2


def test_stays_at_zero_without_activity() -> None:
    spec = scaling(min=0)
    proposals, _ = run(spec, [at(t, ready=0) for t in times(0, 100, 10)])
    assert {p.replicas for p in proposals} == {0}
    assert proposals[-1].reason == "idle at zero (100 s without requests)"


def test_a_model_at_zero_with_stale_load_in_its_window_stays_at_zero() -> None:
    spec = scaling(min=0, scale_to_zero_after_s=10)
    samples = [at(0, ready=1, load=4)] + [at(t, ready=1) for t in times(1, 11)] + [at(12, ready=0)]
    proposals, _ = run(spec, samples)
    assert [p.replicas for p in proposals[9:]] == [1, 0, 0, 0]
    assert proposals[10].reason == "idle 10 s: to zero"


# clamps


def test_max_clamps_a_large_load() -> None:
    proposals, _ = run(scaling(max=4, scale_up_rate=10, panic_threshold=100), [at(0, ready=2, load=1000)])
    assert proposals[0].replicas == 4
    assert "max 4" in proposals[0].reason


def test_a_model_above_max_comes_down_at_once() -> None:
    proposals, _ = run(scaling(max=4), [at(0, ready=8, load=32)])
    assert proposals[0].replicas == 4
    assert "max 4" in proposals[0].reason


def test_a_model_below_min_starts_min_at_once() -> None:
    proposals, _ = run(scaling(min=3), [at(0, ready=0)])
    assert proposals[0].replicas == 3
    assert "min 3" in proposals[0].reason


def test_scale_down_stops_at_min() -> None:
    proposals, _ = run(scaling(min=3, scale_down_delay_s=0), [at(0, ready=4)])
    assert proposals[0].replicas == 3
    assert "min 3" in proposals[0].reason


def test_fixed_bounds_never_change() -> None:
    spec = scaling(min=3, max=3, scale_down_delay_s=0)
    samples = [
        at(0, ready=0),
        at(1, ready=3, load=100),
        at(2, ready=3, load=100, ttft_p90_s=9.0, kv_usage=1.0),
        at(3, ready=3),
        at(1000, ready=3),
    ]
    proposals, _ = run(spec, samples, slo=SLO)
    assert {p.replicas for p in proposals} == {3}


# SLO and KV pressure


def test_ttft_breach_adds_one() -> None:
    proposals, _ = run(scaling(), [at(0, ready=2, load=8, ttft_p90_s=3.1)], slo=SLO)
    assert proposals[0].replicas == 3
    assert proposals[0].reason == "TTFT p90 3.1 s over SLO 2.0 s: +1"


def test_tpot_breach_adds_one() -> None:
    proposals, _ = run(scaling(), [at(0, ready=2, load=8, tpot_p90_s=0.08)], slo=SLO)
    assert proposals[0].replicas == 3
    assert proposals[0].reason == "TPOT p90 0.08 s over SLO 0.05 s: +1"


@pytest.mark.parametrize(
    ("slo", "fields"),
    [
        (SLO, {"ttft_p90_s": 1.9, "tpot_p90_s": 0.05}),
        (SLO, {}),
        (None, {"ttft_p90_s": 30.0}),
        (SLOSpec(tpot_p90_s=0.05), {"ttft_p90_s": 30.0}),
    ],
)
def test_within_slo_or_unknown_changes_nothing(slo: SLOSpec | None, fields: dict[str, Any]) -> None:
    proposals, _ = run(scaling(), [at(0, ready=2, load=8, **fields)], slo=slo)
    assert proposals[0].replicas == 2


def test_slo_needs_a_ready_replica() -> None:
    proposals, _ = run(scaling(), [at(0, ready=0, starting=1, queued=4, ttft_p90_s=9.0)], slo=SLO)
    assert proposals[0].replicas == 1


def test_slo_breach_adds_one_replica_at_a_time() -> None:
    spec = scaling(panic_window_s=6)
    samples = [at(0, ready=2, load=8, ttft_p90_s=3.0)]
    samples += [at(t, ready=2, starting=1, load=8, ttft_p90_s=3.0) for t in times(0.5, 19.5, 0.5)]
    samples += [at(t, ready=3, load=8, ttft_p90_s=3.0) for t in times(20, 25.5, 0.5)]
    proposals, _ = run(spec, samples, slo=SLO)
    assert proposals[0].replicas == 3
    assert {p.replicas for p in proposals[1:-1]} == {3}
    assert "holding 3 (1 starting)" in proposals[1].reason
    assert "holding 3 (a replica just became ready)" in proposals[-2].reason
    assert proposals[-1].replicas == 4  # still over, 6 s after the third one came up


def test_slo_step_is_not_taken_back_while_the_actuator_lags() -> None:
    samples = [at(t, ready=2, load=8, ttft_p90_s=3.0) for t in (0, 0.5, 1)] + [at(1.5, ready=2, starting=1, load=8)]
    proposals, _ = run(scaling(), samples, slo=SLO)
    assert [p.replicas for p in proposals] == [3, 3, 3, 3]
    assert "holding 3 (scaled up 0 s ago)" in proposals[1].reason


def test_slo_breach_blocks_scale_down() -> None:
    proposals, _ = run(scaling(), [at(100, ready=4, ttft_p90_s=3.0)], slo=SLO, memory=quiet_memory(100))
    assert proposals[0].replicas == 5


@pytest.mark.parametrize(("kv_usage", "expected"), [(0.95, 3), (0.9, 3), (0.89, 2)])
def test_kv_pressure_adds_one(kv_usage: float, expected: int) -> None:
    proposals, _ = run(scaling(), [at(0, ready=2, load=8, kv_usage=kv_usage)])
    assert proposals[0].replicas == expected
    if expected == 3:
        assert proposals[0].reason.startswith("KV cache")


# memory and purity


def test_memory_is_bounded_by_the_windows() -> None:
    spec = scaling(stable_window_s=60, scale_down_delay_s=30)
    _, memory = run(spec, [at(t, ready=2, load=8) for t in times(0, 500, 0.5)])
    assert len(memory.samples) == 120
    assert memory.samples[0].at == 440.5
    assert len(memory.wanted) == 61


def test_up_and_down_times_are_remembered() -> None:
    spec = scaling(scale_down_delay_s=0, panic_threshold=10)
    _, memory = run(spec, [at(1, ready=1, load=8)])
    assert (memory.last_up_at, memory.last_down_at) == (1, float("-inf"))
    _, memory = run(spec, [at(2, ready=4)], memory=memory)
    assert (memory.last_up_at, memory.last_down_at) == (1, 2)


def test_idleness_is_measured_from_the_first_sample() -> None:
    spec = scaling()
    _, memory = run(spec, [at(7, ready=1)])
    assert memory.last_active_at == 7
    _, memory = run(spec, [at(8, ready=1)], memory=memory)
    assert memory.last_active_at == 7
    _, memory = run(spec, [at(9, ready=1, load=1)], memory=memory)
    assert memory.last_active_at == 9


def test_decide_is_pure() -> None:
    spec, memory, sample = scaling(), quiet_memory(100), at(100, ready=4, load=3)
    assert decide(spec, SLO, 4, memory, sample) == decide(spec, SLO, 4, memory, sample)


def test_target_must_be_positive() -> None:
    with pytest.raises(ValueError, match="target"):
        decide(scaling(), None, 0, Memory(), at(0))


def test_every_proposal_is_within_bounds_and_says_why() -> None:
    spec = scaling(min=0, max=6, scale_to_zero_after_s=60)
    loads = [(t, 0) for t in times(0, 70, 0.5)] + [(t, 30) for t in times(70.5, 90, 0.5)]
    loads += [(t, 3) for t in times(90.5, 200, 0.5)] + [(t, 0) for t in times(200.5, 400, 0.5)]
    history = simulate(spec, loads, ready=0)
    assert all(0 <= p.replicas <= 6 and p.reason for _, p in history)
    assert max(p.replicas for _, p in history) == 6
    assert history[-1][1].replicas == 0
