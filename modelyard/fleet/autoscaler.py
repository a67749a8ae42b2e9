"""The autoscaler: a pure function from one model's observations to its desired replica count, Knative KPA-like.

The reconcile loop samples each autoscaled model about twice a second and calls
`decide(spec, slo, target, memory, sample)`; it keeps the returned `Memory` and passes it back next time. Nothing
here reads a clock or does I/O: time is the samples' `at`, so a scripted sequence of samples replays a history.

The policy, for one model (`target`: the requests one replica should carry):

- load = in_flight + queued (at its replicas, and waiting in the gateway in front of them); current = ready +
  starting: replicas that are starting count as capacity, so the same load never scales up twice while they start.
- Two plain averages of the samples' loads, the new sample included: over `stable_window_s` and over
  `panic_window_s`; each wants ceil(average / target) replicas.
- Panic: when the short window wants at least `panic_threshold` x max(current, 1) replicas, and more than current,
  the model panics until `stable_window_s` after the last such trigger. While panicking it wants
  max(current, what the short window wants) and never scales down. Otherwise it wants what the stable window wants.
- Pressure: with ready replicas, a recent TTFT or TPOT p90 over the SLO, or KV cache usage >= 0.9, wants at least
  current + 1. The step is taken once per replica: while one is starting, within `panic_window_s` of the last
  scale-up or of a replica becoming ready, it holds current instead (the p90s need time to show the new replica),
  or the step it just proposed where the sample does not show that yet (the actuator lags a tick).
- A model with replicas keeps at least one (and at least `min`) while it has load or recent activity.
- Up: at most max(current + 1, ceil(max(current, 1) x scale_up_rate)) per decision.
- Down: only once every desired proposed over the last `scale_down_delay_s` (the `wanted` history, which must cover
  that long) is below current, and the last scale-up is at least that old; then to the highest of those, but at
  most to ceil(current / scale_down_rate) and at least one less (rate 2: at most halve).
- To zero: with `min: 0`, after `scale_to_zero_after_s` without load or arrivals (measured from `last_active_at`),
  0 at once. At zero, any load or arrival proposes at once, skipping windows and delays ("activation", the
  activator's job in Knative): 1, or more if the panic window wants more, within the up rate. Without activity a
  model at zero stays there.
- Last, clamp to [min, max]: no delay or rate holds that back (a spec that changed takes effect at once).

`Memory.last_active_at` is None only before the first decision; idleness is then measured from the first sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelyard.spec.scaling import ScalingSpec, SLOSpec

KV_PRESSURE = 0.9  # KV cache usage (0..1) of the fullest ready replica that wants one more replica
_EPSILON = 1e-9  # averages are floats: 12.000000001 / 4 is 3 replicas, not 4


@dataclass(frozen=True)
class Sample:
    """One observation of one model, as the reconcile loop takes it every ~0.5 s."""

    at: float  # time.monotonic() seconds
    ready: int  # replicas serving
    starting: int  # replicas launched or waking, not ready yet (credit: they will serve soon)
    in_flight: int  # requests at its replicas from the gateway (running or queued in the engine)
    queued: int  # requests waiting in the gateway in front of it (admission queue + held for a cold start)
    arrivals: int = 0  # requests that arrived since the previous sample (any count > 0 means "not idle")
    kv_usage: float = 0.0  # highest KV-cache usage among ready replicas, 0..1
    ttft_p90_s: float | None = None  # recent, when known
    tpot_p90_s: float | None = None


@dataclass(frozen=True)
class Memory:
    """What the policy remembers between decisions; the reconcile loop keeps it and passes it back."""

    samples: tuple[Sample, ...] = ()  # within the stable window only (bounded)
    last_up_at: float = -math.inf
    last_down_at: float = -math.inf
    last_active_at: float | None = None  # last sample with load or arrivals (None: none yet -> use first sample's time)
    panic_until: float = -math.inf
    wanted: tuple[tuple[float, int], ...] = ()  # (at, desired) recent proposals, for the scale-down delay


@dataclass(frozen=True)
class Proposal:
    replicas: int  # desired replicas (clamped to [min, max]; may be 0 when min is 0)
    reason: str  # a short human sentence saying why
    panic: bool = False


@dataclass(frozen=True)
class _View:
    """One decision's inputs, derived once."""

    spec: ScalingSpec
    target: float
    sample: Sample
    samples: tuple[Sample, ...]  # the stable window, the new sample included
    current: int
    load: int
    active: bool
    idle_since: float  # when it was last active (or first seen)
    panic_want: int
    triggered: bool
    panicking: bool
    panic_until: float

    @property
    def now(self) -> float:
        return self.sample.at

    @property
    def idle_s(self) -> float:
        return 0.0 if self.active else max(0.0, self.sample.at - self.idle_since)

    @property
    def to_zero(self) -> bool:
        spec = self.spec
        return spec.min == 0 and not self.active and not self.panicking and self.idle_s >= spec.scale_to_zero_after_s


def decide(
    spec: ScalingSpec, slo: SLOSpec | None, target: float, memory: Memory, sample: Sample
) -> tuple[Proposal, Memory]:
    """`target`: requests per replica (the caller passes spec.target_in_flight or the engine's slots)."""
    if not target > 0:
        raise ValueError(f"target: must be > 0, got {target}")
    view = _view(spec, target, memory, sample)
    want, reason = _want(view, slo, memory)
    wanted = _recent_wanted(memory.wanted + ((view.now, want),), view.now, spec.scale_down_delay_s)
    replicas, reason = _pace(view, memory, wanted, want, reason)
    replicas, reason = _clamp(spec, replicas, reason)
    current, now = view.current, view.now
    remembered = Memory(
        samples=view.samples,
        last_up_at=now if replicas > current else memory.last_up_at,
        last_down_at=now if replicas < current else memory.last_down_at,
        last_active_at=now if view.active else view.idle_since,
        panic_until=view.panic_until,
        wanted=wanted,
    )
    return Proposal(replicas=replicas, reason=reason, panic=view.panicking), remembered


def _view(spec: ScalingSpec, target: float, memory: Memory, sample: Sample) -> _View:
    now = sample.at
    samples = _within(memory.samples + (sample,), now, spec.stable_window_s)
    current = sample.ready + sample.starting
    load = sample.in_flight + sample.queued
    active = load > 0 or sample.arrivals > 0
    if memory.last_active_at is not None:
        idle_since = memory.last_active_at
    else:
        idle_since = memory.samples[0].at if memory.samples else now
    panic_want = _replicas_for(_average(_within(samples, now, spec.panic_window_s)), target)
    triggered = panic_want > current and panic_want >= spec.panic_threshold * max(current, 1)
    panic_until = now + spec.stable_window_s if triggered else memory.panic_until
    return _View(
        spec=spec,
        target=target,
        sample=sample,
        samples=samples,
        current=current,
        load=load,
        active=active,
        idle_since=idle_since,
        panic_want=panic_want,
        triggered=triggered,
        panicking=now < panic_until,
        panic_until=panic_until,
    )


def _want(view: _View, slo: SLOSpec | None, memory: Memory) -> tuple[int, str]:
    """What the model should run, before the rates, the scale-down delay and the clamp."""
    spec, current = view.spec, view.current
    if current == 0 and spec.min == 0 and not view.active:
        return 0, f"idle at zero ({view.idle_s:.0f} s without requests)"
    if current > 0 and view.to_zero:
        return 0, f"idle {view.idle_s:.0f} s: to zero"
    if current == 0 and view.active:
        return _activation(view)
    if view.panicking:
        n, reason = max(current, view.panic_want), _panic_reason(view)
    else:
        stable_avg = _average(view.samples)
        n = _replicas_for(stable_avg, view.target)
        reason = f"in flight {stable_avg:.1f} ({spec.stable_window_s:g} s avg) / target {view.target:g} -> {n}"
    n, reason = _pressure(view, slo, memory, n, reason)
    n, reason = _floor(view, n, reason)
    return _clamp(spec, n, reason)


def _activation(view: _View) -> tuple[int, str]:
    sample = view.sample
    reason = f"activation at zero: {view.load} waiting, {sample.arrivals} arrived"
    if view.panic_want <= 1:
        return 1, f"{reason} -> 1"
    return _clamp(view.spec, view.panic_want, f"{reason}; {_panic_reason(view)}")


def _panic_reason(view: _View) -> str:
    spec = view.spec
    avg = f"{spec.panic_window_s:g} s avg {_average(_within(view.samples, view.now, spec.panic_window_s)):.1f}"
    if view.triggered:
        return f"panic: {avg} wants {view.panic_want} (>= {spec.panic_threshold:g}x {max(view.current, 1)})"
    left = view.panic_until - view.now
    return f"panic for {left:.0f} s more: {avg} wants {view.panic_want}, no scale-down"


def _pressure(view: _View, slo: SLOSpec | None, memory: Memory, n: int, reason: str) -> tuple[int, str]:
    """An SLO breach or a full KV cache wants one replica more than current, one at a time."""
    why = _pressure_reason(slo, view.sample)
    if why is None or n > view.current:
        return n, reason
    settling = _settling(view, memory)
    if settling is None:
        return view.current + 1, f"{why}: +1"
    hold = _unseen_step(view, memory)
    return hold, f"{why}: holding {hold} ({settling})"


def _unseen_step(view: _View, memory: Memory) -> int:
    """Current, or current + 1 where the previous decision stepped up and this sample does not show it yet."""
    if not memory.wanted or memory.wanted[-1][0] != memory.last_up_at:
        return view.current
    return max(view.current, min(memory.wanted[-1][1], view.current + 1))


def _pressure_reason(slo: SLOSpec | None, sample: Sample) -> str | None:
    if sample.ready == 0:
        return None
    if slo is not None:
        for name, seen, bound in (
            ("TTFT", sample.ttft_p90_s, slo.ttft_p90_s),
            ("TPOT", sample.tpot_p90_s, slo.tpot_p90_s),
        ):
            if seen is not None and bound is not None and seen > bound:
                return f"{name} p90 {_seconds(seen)} s over SLO {_seconds(bound)} s"
    if sample.kv_usage >= KV_PRESSURE:
        return f"KV cache {sample.kv_usage:.0%} used (>= {KV_PRESSURE:.0%})"
    return None


def _settling(view: _View, memory: Memory) -> str | None:
    """Why the last step up may not show in the latencies yet, if it may not."""
    sample, window = view.sample, view.spec.panic_window_s
    if sample.starting > 0:
        return f"{sample.starting} starting"
    if view.now - memory.last_up_at < window:
        return f"scaled up {view.now - memory.last_up_at:.0f} s ago"
    if any(s.ready < sample.ready for s in view.samples if view.now - s.at < window):
        return "a replica just became ready"
    return None


def _floor(view: _View, n: int, reason: str) -> tuple[int, str]:
    spec = view.spec
    lower = spec.min if view.current == 0 else max(spec.min, 1)
    if n >= lower:
        return n, reason
    if spec.min >= lower:
        return lower, f"{reason}; min {spec.min}"
    if view.active:
        return lower, f"{reason}; keeping 1 while active"
    return lower, f"{reason}; keeping 1: idle {view.idle_s:.0f} s of {spec.scale_to_zero_after_s:g} s"


def _pace(
    view: _View, memory: Memory, wanted: tuple[tuple[float, int], ...], want: int, reason: str
) -> tuple[int, str]:
    """The up rate, the scale-down delay and the down rate."""
    spec, current = view.spec, view.current
    if want > current:
        cap = max(current + 1, _ceil(max(current, 1) * spec.scale_up_rate))
        if want > cap:
            return cap, f"{reason}; up rate: {cap}"
        return want, reason
    if want == current or (want == 0 and view.to_zero):
        return want, reason
    held = _down_hold(view, memory, wanted)
    if held is not None:
        return current, f"held: {reason}; {held}"
    highest = max(d for _, d in wanted)
    step = min(current - 1, _ceil(current / spec.scale_down_rate))
    if step > max(highest, want):
        return step, f"{reason}; down rate: {step}"
    if highest > want:
        return highest, f"{reason}; {highest} wanted within {spec.scale_down_delay_s:g} s"
    return want, reason


def _down_hold(view: _View, memory: Memory, wanted: tuple[tuple[float, int], ...]) -> str | None:
    """Why fewer replicas must wait, if they must."""
    delay = view.spec.scale_down_delay_s
    since_up = view.now - memory.last_up_at
    if since_up < delay:
        return f"scaled up {since_up:.0f} s ago (scale-down delay {delay:g} s)"
    higher = [d for _, d in wanted if d >= view.current]
    if higher:
        return f"{max(higher)} wanted within {delay:g} s"
    covered = view.now - wanted[0][0]
    if covered < delay:
        return f"fewer wanted for {covered:.0f} s of {delay:g} s"
    return None


def _clamp(spec: ScalingSpec, n: int, reason: str) -> tuple[int, str]:
    if n > spec.max:
        return spec.max, f"{reason}; max {spec.max}"
    if n < spec.min:
        return spec.min, f"{reason}; min {spec.min}"
    return n, reason


def _within(samples: tuple[Sample, ...], now: float, window_s: float) -> tuple[Sample, ...]:
    return tuple(s for s in samples if now - s.at < window_s)


def _recent_wanted(wanted: tuple[tuple[float, int], ...], now: float, delay_s: float) -> tuple[tuple[float, int], ...]:
    """The proposals of the last `delay_s`, and the newest one before (it was in force when that window began)."""
    cut = now - delay_s
    older = [w for w in wanted if w[0] <= cut]
    return tuple(older[-1:] + [w for w in wanted if w[0] > cut])


def _average(samples: tuple[Sample, ...]) -> float:
    if not samples:
        return 0.0
    return sum(s.in_flight + s.queued for s in samples) / len(samples)


def _replicas_for(load: float, target: float) -> int:
    return max(0, _ceil(load / target))


def _ceil(x: float) -> int:
    return math.ceil(x - _EPSILON)


def _seconds(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.3g}"
