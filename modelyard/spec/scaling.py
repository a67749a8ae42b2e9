"""How many replicas a model runs: fixed (`replicas: 2`), autoscaled (`replicas: {min, max, ...}`), or pooled
(`pools:`, members put to sleep and woken on demand), and what the machine may give them (`resources:`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from modelyard.spec.common import NAME_PATTERN, Strict


class ScalingSpec(Strict):
    """An autoscaled model: between `min` and `max` replicas, `target_in_flight` requests per replica."""

    min: Annotated[int, Field(ge=0, le=64)] = 1
    max: Annotated[int, Field(ge=1, le=64)]
    # requests (at the replicas plus queued in front of them) one replica should carry; default: its slots
    target_in_flight: Annotated[float, Field(gt=0)] | None = None
    scale_to_zero_after_s: Annotated[float, Field(gt=0)] = 300.0  # idle this long: to zero (with min: 0)
    cold_start_timeout_s: Annotated[float, Field(gt=0)] = 120.0  # a request held this long for a replica to start
    stable_window_s: Annotated[float, Field(gt=0)] = 60.0  # load averaged over this window ...
    panic_window_s: Annotated[float, Field(gt=0)] = 6.0  # ... and over this one, to react to a burst
    panic_threshold: Annotated[float, Field(gt=1)] = 2.0  # the short window wants this many times the replicas
    scale_up_rate: Annotated[float, Field(gt=1)] = 2.0  # at most x this many replicas per decision (at least +1)
    scale_down_rate: Annotated[float, Field(gt=1)] = 2.0  # at most / this many per decision (at least -1)
    scale_down_delay_s: Annotated[float, Field(ge=0)] = 30.0  # fewer replicas only once wanted for this long

    @model_validator(mode="after")
    def _bounds(self) -> ScalingSpec:
        if self.max < self.min:
            raise ValueError(f"max: must be >= min ({self.min})")
        if self.panic_window_s > self.stable_window_s:
            raise ValueError("panic_window_s: must be <= stable_window_s")
        return self


class SLOSpec(Strict):
    """What a model's users should see; the autoscaler adds a replica while a recent p90 is over it."""

    ttft_p90_s: Annotated[float, Field(gt=0)] | None = None
    tpot_p90_s: Annotated[float, Field(gt=0)] | None = None


class PoolSpec(Strict):
    """Models sharing a few places: a member is woken (or started) on demand; when the places are short, the least
    recently used idle member is put to sleep (or stopped, if its engine cannot sleep)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    slots: Annotated[int, Field(ge=1, le=1024)] | None = None  # members awake at once ...
    memory_gib: Annotated[float, Field(gt=0)] | None = None  # ... or their memory_gib summed
    members: Annotated[tuple[str, ...], Field(min_length=1)]
    pinned: tuple[str, ...] = ()  # always awake
    sleep_level: Annotated[int, Field(ge=1, le=2)] = 1  # vLLM's: 1 keeps the weights in host memory
    wake_timeout_s: Annotated[float, Field(gt=0)] = 120.0  # a request held this long for its member to wake
    min_awake_s: Annotated[float, Field(ge=0)] = 5.0  # a member woken is not put back to sleep sooner

    @model_validator(mode="after")
    def _capacity(self) -> PoolSpec:
        if (self.slots is None) == (self.memory_gib is None):
            raise ValueError("give exactly one of slots or memory_gib")
        return self


class ResourcesSpec(Strict):
    """What `modelyard up` may use on this machine; replicas never need more (unset: no bound)."""

    cpus: Annotated[float, Field(gt=0)] | None = None
    memory_gib: Annotated[float, Field(gt=0)] | None = None
    gpus: Annotated[int, Field(ge=0)] | None = None
