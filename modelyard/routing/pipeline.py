"""Routes a request to one replica of its model: filters -> weighted scorers -> picker, one pipeline per model.

Each model's profile (spec `models[].routing`) gets plugin instances of its own, so that state (a prefix index, a
session table, a round-robin position) is per model. Every plugin call and every whole decision is timed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from itertools import repeat
from operator import add, mul
from time import perf_counter
from typing import cast

from modelyard.local_tokenizer import LocalTokenizer
from modelyard.observability.metrics import FastHistogram, RoutingTimings
from modelyard.routing import registry
from modelyard.routing.contracts import Context, Filter, Picker, Preparing, RouteRequest, Scorer, Stateful
from modelyard.routing.endpoints import Endpoint, EndpointTable
from modelyard.routing.plugins.ready import ReadyFilter
from modelyard.spec.roles import DECODE
from modelyard.spec.schema import ProfileSpec, RoutingSpec, YardSpec


class Pipeline:
    """One model's profile, built: the ready filter first, the profile's filters, scorers with normalized weights,
    a picker, and the plugins that want to hear where requests went."""

    def __init__(self, model: str, profile: ProfileSpec, routing: RoutingSpec, context: Context,
                 timings: RoutingTimings) -> None:
        self.model, self.profile = model, profile.name
        plugins = registry.instances(routing)

        def build(name: str) -> object:
            instance = plugins[name]
            params = instance.type.params.model_validate(dict(instance.params))
            return instance.type.factory(params, context)

        self.ready = ReadyFilter(context.clock)
        self.ready_timer = timings.plugin(model, registry.READY)
        self.filters: list[tuple[Filter, FastHistogram]] = [
            (cast(Filter, build(name)), timings.plugin(model, name))
            for name in profile.filters if plugins[name].type.name != registry.READY]
        total = sum(ref.weight for ref in profile.scorers) or 1.0
        self.scorers: list[tuple[Scorer, float, FastHistogram]] = [
            (cast(Scorer, build(ref.plugin)), ref.weight / total, timings.plugin(model, ref.plugin))
            for ref in profile.scorers]
        self.picker = cast(Picker, build(profile.picker))
        self.picker_timer = timings.plugin(model, profile.picker)
        parts: list[object] = [f for f, _ in self.filters] + [s for s, _, _ in self.scorers] + [self.picker]
        self.stateful: list[Stateful] = [p for p in parts if isinstance(p, Stateful)]
        self.preparing: list[Preparing] = [p for p in parts if isinstance(p, Preparing)]
        self.decision_timer = timings.decision(model)

    def pick(self, request: RouteRequest, endpoints: list[Endpoint],
             exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        start = before = perf_counter()
        candidates = self.ready.filter(request, endpoints)
        if exclude:
            excluded = {id(e) for e in exclude}
            candidates = [e for e in candidates if id(e) not in excluded]
        now = perf_counter()
        self.ready_timer.observe(now - before)
        before = now
        for plugin, timer in self.filters:
            if not candidates:
                break
            candidates = plugin.filter(request, candidates)
            now = perf_counter()
            timer.observe(now - before)
            before = now
        if not candidates:
            self.decision_timer.observe(perf_counter() - start)
            return None
        chosen = candidates[0] if len(candidates) == 1 else self._choose(request, candidates, before)
        for stateful in self.stateful:
            stateful.routed(request, chosen)
        self.decision_timer.observe(perf_counter() - start)
        return chosen

    def _choose(self, request: RouteRequest, candidates: Sequence[Endpoint], before: float) -> Endpoint:
        totals = self.weighted(request, candidates, before)
        before = perf_counter()
        chosen = self.picker.pick(request, candidates, totals)
        self.picker_timer.observe(perf_counter() - before)
        return chosen

    def weighted(self, request: RouteRequest, candidates: Sequence[Endpoint], before: float = 0.0) -> list[float]:
        """Each candidate's weighted score, normalized by the total weight: in [0, 1]."""
        totals: list[float] | None = None
        for scorer, weight, timer in self.scorers:
            weighted = map(mul, repeat(weight), scorer.score(request, candidates))  # element-wise in C
            totals = list(weighted) if totals is None else list(map(add, totals, weighted))
            now = perf_counter()
            timer.observe(now - before)
            before = now
        if totals is None:
            return [0.0] * len(candidates)
        assert len(totals) == len(candidates), "a scorer must give one score per candidate"
        return totals

    def finished(self, request: RouteRequest, endpoint: Endpoint) -> None:
        for stateful in self.stateful:
            stateful.finished(request, endpoint)


class Router:
    """Picks a replica for a request with its model's pipeline; the relay only ever calls prepare, pick and
    finished."""

    def __init__(self, spec: YardSpec, table: EndpointTable, timings: RoutingTimings | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 processes: int = 1, tokenizers: Mapping[str, LocalTokenizer] | None = None) -> None:
        self.table = table
        self.tokenizers = dict(tokenizers or {})  # by model: those loaded in the gateway (`tokenizer: local`)
        self.timings = timings if timings is not None else RoutingTimings()
        profiles = registry.profiles(spec.routing)
        source = rng or random.Random()
        self.pipelines = {
            model.name: Pipeline(model.name, profiles[registry.profile_name(model, spec.routing)], spec.routing,
                                 Context(model.name, clock, random.Random(source.random()), processes,
                                         self.tokenizers.get(model.name)), self.timings)
            for model in spec.models}
        # a disaggregated model's decode leg routes with a profile of its own (spec/roles.py; its prefill leg, with
        # the model's); a leg's candidates are the replicas of its role
        self.decode_pipelines = {
            model.name: Pipeline(model.name, profiles[model.roles.decode_routing], spec.routing,
                                 Context(model.name, clock, random.Random(source.random()), processes), self.timings)
            for model in spec.models if model.roles is not None}

    def _pipeline(self, request: RouteRequest) -> Pipeline | None:
        if request.role == DECODE:
            return self.decode_pipelines.get(request.model)
        return self.pipelines.get(request.model)

    def _endpoints(self, request: RouteRequest) -> list[Endpoint]:
        endpoints = self.table.of(request.model)
        if request.role is None:
            return endpoints
        return [e for e in endpoints if e.role == request.role]

    async def prepare(self, request: RouteRequest) -> None:
        """What the model's plugins need to know before `pick` (a no-op for most profiles)."""
        pipeline = self._pipeline(request)
        if pipeline is not None and pipeline.preparing:
            endpoints = self._endpoints(request)
            for plugin in pipeline.preparing:
                await plugin.prepare(request, endpoints)

    async def close(self) -> None:
        for pipeline in (*self.pipelines.values(), *self.decode_pipelines.values()):
            for plugin in pipeline.preparing:
                await plugin.close()

    def pick(self, request: RouteRequest, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        pipeline = self._pipeline(request)
        if pipeline is None:
            return None
        return pipeline.pick(request, self._endpoints(request), exclude)

    def finished(self, request: RouteRequest, endpoint: Endpoint) -> None:
        pipeline = self._pipeline(request)
        if pipeline is not None:
            pipeline.finished(request, endpoint)
