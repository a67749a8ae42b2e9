"""The control plane: one reconcile loop that keeps every model's desired state and makes the replicas converge to
it, level-triggered (each tick compares what is with what is wanted, whatever happened in between).

- fixed models: the replicas of the spec, started once; never touched here;
- autoscaled models: `fleet/autoscaler.decide` proposes replicas from a sample of the model's load;
- pool members: `fleet/pools.plan` proposes who wakes, starts, sleeps or stops.

Both policies are pure functions; `resources:` bounds what they may add; the supervisor (fleet/supervisor.py) is
the actuator. Every change is an `Event` with its reason: kept (the latest `MAX_EVENTS`), logged, and counted in
the view that the gateway workers get (`view()`: /health and /metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from modelyard.engines import get_engine
from modelyard.engines.base import Resources
from modelyard.fleet.autoscaler import Memory, Sample, decide
from modelyard.fleet.pools import Member, plan
from modelyard.fleet.supervisor import Supervisor
from modelyard.fleet.trace import TraceWriter
from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState
from modelyard.spec.scaling import PoolSpec
from modelyard.spec.schema import AnyModel, YardSpec

log = logging.getLogger("modelyard.fleet")
INTERVAL_S = 0.5
MAX_EVENTS = 500
STARTING = frozenset({ReplicaState.STARTING, ReplicaState.WAKING, ReplicaState.RESTARTING})
MEMBER_STATE = {ReplicaState.READY: "awake", ReplicaState.ASLEEP: "asleep", ReplicaState.WAKING: "waking",
                ReplicaState.DRAINING: "draining"}


class Signals(Protocol):
    """What the gateway knows of a model's load (fleet/gateway_workers.py sums it over the workers)."""

    def queued(self, model: str) -> int: ...

    def arrivals(self, model: str) -> int: ...

    def latency(self, model: str) -> tuple[float | None, float | None]: ...

    def kv_usage(self, replica: str) -> float: ...


@dataclass(frozen=True)
class Event:
    at: float  # time.time()
    model: str
    action: str  # scale | wake | start | sleep | stop | held
    detail: str

    def __str__(self) -> str:
        return f"{self.model}: {self.action} {self.detail}"


class Reconciler:
    def __init__(self, spec: YardSpec, supervisor: Supervisor, table: EndpointTable, signals: Signals,
                 interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 trace_dir: Path | None = None) -> None:
        self.spec, self.supervisor, self.table, self.signals = spec, supervisor, table, signals
        self.traces = {m.name: TraceWriter(trace_dir / f"{m.name.replace('/', '_')}.jsonl")
                       for m in spec.models if trace_dir is not None and m.scaling is not None}
        self.interval_s, self.clock = interval_s, clock
        self.models = {m.name: m for m in spec.models}
        self.needs = {m.name: get_engine(m.engine).resources(m) for m in spec.models}  # one replica's share
        self.desired = {m.name: supervisor.initial(m) for m in spec.models}
        self.memory: dict[str, Memory] = {}
        self.events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self.total = 0  # events since start (the deque keeps the latest)
        self.counts: dict[str, dict[str, int]] = {}  # by model and action: events since start
        self._arrivals: dict[str, int] = {}
        self._held: dict[str, int] = {}  # by model: the proposal last reported as held back (said once)
        self.paused: set[str] = set()  # models a rollout (fleet/rollout.py) is replacing: not scaled meanwhile
        self._last_used: dict[str, float] = {}
        self._resident_since: dict[str, float] = {}
        self._waiting_since: dict[str, float] = {}  # pool members: since when requests wait for them (first come)

    def strategy(self, model: AnyModel) -> str:
        if self.spec.pool_of(model.name) is not None:
            return "pooled"
        return "autoscaled" if model.scaling is not None else "fixed"

    def view(self) -> dict[str, Any]:
        """For the gateway workers: each model's desired replicas, strategy and decisions so far."""
        return {name: {"desired": self.desired[name], "strategy": self.strategy(model),
                       "events": self.counts.get(name, {})} for name, model in self.models.items()}

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except Exception:  # a bug in a policy must not stop the cluster: logged, tried again next tick
                    log.exception("reconcile tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
        finally:
            for trace in self.traces.values():
                trace.close()

    def pause(self, model: str) -> None:
        self.paused.add(model)

    def resume(self, model: str) -> None:
        self.paused.discard(model)

    def reconfigure(self, spec: YardSpec) -> None:
        """A revision applied (`modelyard apply`): the new models, scaling, pools and resources from the next
        tick; a model's memory of its load stays."""
        self.spec = spec
        self.models = {m.name: m for m in spec.models}
        self.needs = {m.name: get_engine(m.engine).resources(m) for m in spec.models}
        self.desired = {m.name: self.desired.get(m.name, self.supervisor.initial(m)) for m in spec.models}
        for model in spec.models:  # a fixed count that changed, or an autoscaled model's new bounds
            strategy = self.strategy(model)
            if strategy == "pooled":
                continue  # the pool's plan decides, next tick
            wanted = model.min_replicas if strategy == "fixed" else self.desired[model.name]
            self.desired[model.name] = max(model.min_replicas, min(model.max_replicas, wanted))
            if model.name not in self.paused:
                self.supervisor.scale(model, self.desired[model.name])

    def tick(self) -> None:
        now = self.clock()
        for model in self.spec.models:
            if model.name in self.paused:
                continue
            if self.strategy(model) == "autoscaled":
                self._autoscale(model, now)
        for pool in self.spec.pools:
            self._pool(pool, now)

    def _autoscale(self, model: AnyModel, now: float) -> None:
        scaling = model.scaling
        assert scaling is not None
        endpoints = self.table.of(model.name)
        sample = self._sample(model, endpoints, now)
        target = scaling.target_in_flight or float(get_engine(model.engine).slots(model))
        proposal, self.memory[model.name] = decide(scaling, model.slo, target, self.memory.get(model.name, Memory()),
                                                   sample)
        before = self.desired[model.name]
        wanted = self._fit(model, proposal.replicas, before)
        if wanted < proposal.replicas and self._held.get(model.name) != proposal.replicas:
            self._held[model.name] = proposal.replicas
            self._event(model.name, "held", f"at {wanted}: {proposal.reason}; {self._short(model, wanted + 1)}")
        elif wanted == proposal.replicas:
            self._held.pop(model.name, None)
        if wanted != before:
            self.desired[model.name] = wanted
            self._event(model.name, "scale", f"{before} -> {wanted}: {proposal.reason}")
        if model.name in self.traces:
            self.traces[model.name].write(sample, self.desired[model.name])
        if len(self.supervisor.staying(model.name)) != self.desired[model.name]:  # level-triggered
            self.supervisor.scale(model, self.desired[model.name])

    def _sample(self, model: AnyModel, endpoints: list[Endpoint], now: float) -> Sample:
        arrivals = self.signals.arrivals(model.name)
        new = arrivals - self._arrivals.get(model.name, 0)
        self._arrivals[model.name] = arrivals
        ready = [e for e in endpoints if e.ready]
        ttft, tpot = self.signals.latency(model.name) if model.slo is not None else (None, None)
        return Sample(at=now, ready=len(ready), starting=sum(1 for e in endpoints if e.state in STARTING),
                      in_flight=sum(max(0, e.in_flight) for e in endpoints), queued=self.signals.queued(model.name),
                      arrivals=max(0, new), kv_usage=max((self.signals.kv_usage(e.id) for e in ready), default=0.0),
                      ttft_p90_s=ttft, tpot_p90_s=tpot)

    def _pool(self, pool: PoolSpec, now: float) -> None:
        members = [self._member(pool, name, now) for name in pool.members]
        for action in plan(pool, members, now):
            model = self.models[action.member]
            resident = 1 if action.kind in ("wake", "start") else 0
            if resident and self._fit(model, 1, 0) < 1:
                if self._held.get(model.name) != 1:
                    self._held[model.name] = 1
                    self._event(model.name, "held", f"not {action.kind}: {self._short(model, 1)}")
                continue
            self._held.pop(model.name, None)
            self.desired[model.name] = resident
            if resident:
                self._resident_since[model.name] = now
            self._event(model.name, action.kind, action.reason)
            self.supervisor.act(model, action.kind, pool.sleep_level)

    def _member(self, pool: PoolSpec, name: str, now: float) -> Member:
        model = self.models[name]
        endpoints = self.table.of(name)
        arrivals = self.signals.arrivals(name)
        in_flight = sum(max(0, e.in_flight) for e in endpoints)
        if arrivals != self._arrivals.get(name, 0) or in_flight:
            self._last_used[name] = now
        self._arrivals[name] = arrivals
        runner = self.supervisor.runner(name, 0)
        if runner is None:
            state = "stopped"
        elif (name, 0) in self.supervisor.leaving:
            state = "draining"  # on its way out: it holds its room until it is gone
        else:
            state = MEMBER_STATE.get(runner.endpoint.state, "starting")
        queued = self.signals.queued(name)
        waiting_since = self._waiting_since.setdefault(name, now) if queued else math.inf
        if not queued:
            self._waiting_since.pop(name, None)
        return Member(name=name, state=state, in_flight=in_flight, queued=queued, waiting_since=waiting_since,
                      last_used_at=self._last_used.get(name, -math.inf),
                      resident_since=self._resident_since.get(name, -math.inf),
                      size=1.0 if pool.slots is not None else (model.memory_gib or 0.0),
                      pinned=name in pool.pinned, can_sleep=get_engine(model.engine).can_sleep(model))

    def _fit(self, model: AnyModel, wanted: int, current: int) -> int:
        """The most replicas up to `wanted` (never fewer than `current`) that keep every model within
        `resources:`; a scale-down always fits."""
        if wanted <= current:
            return wanted
        fits = current
        for count in range(current + 1, wanted + 1):
            if self._over(model, count) is None:
                fits = count
            else:
                break
        return fits

    def _over(self, model: AnyModel, count: int) -> str | None:
        """Which bound of `resources:` `count` replicas of `model` would pass, with the rest as desired."""
        limits = self.spec.resources
        if limits.cpus is None and limits.memory_gib is None and limits.gpus is None:
            return None  # no bound: nothing to add up
        used = Resources()
        for name, need in self.needs.items():
            running = sum(1 for key in self.supervisor.runners if key[0] == name)  # draining ones still hold theirs
            replicas = count if name == model.name else max(self.desired[name], running)
            used = Resources(used.cpus + need.cpus * replicas, used.memory_gib + need.memory_gib * replicas,
                             used.gpus + need.gpus * replicas)
        for field, limit in (("cpus", limits.cpus), ("memory_gib", limits.memory_gib), ("gpus", limits.gpus)):
            if limit is not None and getattr(used, field) > limit:
                return f"resources.{field} {limit:g} (would need {getattr(used, field):g})"
        return None

    def _short(self, model: AnyModel, count: int) -> str:
        return f"beyond {self._over(model, count) or 'resources'}"

    def _event(self, model: str, action: str, detail: str) -> None:
        event = Event(time.time(), model, action, detail)
        self.events.append(event)
        self.total += 1
        counts = self.counts.setdefault(model, {})
        counts[action] = counts.get(action, 0) + 1
        log.info("%s", event)
