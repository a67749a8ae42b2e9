"""`modelyard apply` on the running `up`: a new revision of yard.yaml, planned against the serving one
(spec/diff.py) and carried out without dropping a request.

In place (keys, limits, routing, admission, scaling, pools, resources): the gateway workers and the reconcile loop
take the new spec at once. A model added is started, one removed is drained and stopped. A model whose engine,
weights or arguments changed gets a rolling replacement: a new replica starts beside the old ones (at most
`max_surge` at a time), must pass the model's gate (fleet/gate.py; the readiness probe alone without
`validation:`), then takes traffic while an old one drains (its streams finish); until every old one is gone. If
a gate fails, the new replicas are stopped, the serving revision keeps serving untouched, and the revision is
stored as refused with the gate's report. One apply at a time (`busy`)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from modelyard.fleet.gateway_workers import GatewayWorkers
from modelyard.fleet.reconciler import Reconciler
from modelyard.fleet.replica import ReplicaRunner
from modelyard.fleet.supervisor import Supervisor
from modelyard.spec import SpecError
from modelyard.spec.diff import Plan, describe, plan
from modelyard.spec.loader import parse_spec
from modelyard.spec.schema import AnyModel, YardSpec
from modelyard.store.base import Store

log = logging.getLogger("modelyard.fleet")
Progress = Callable[[str], None]
GateRunner = Callable[[AnyModel, Path, list[str], list[str]], Awaitable[dict[str, Any]]]


class ApplyError(Exception):
    """The revision is refused; the message says why (the serving revision is untouched)."""


@dataclass
class Outcome:
    applied: bool
    gates: dict[str, Any] = field(default_factory=dict)
    revision: int = 0


async def default_gate(model: AnyModel, spec_dir: Path, candidates: list[str], serving: list[str]) -> dict[str, Any]:
    """The model's `validation:` (fleet/gate.py) against the new replicas, beside the serving ones."""
    from modelyard.engines import get_engine
    from modelyard.fleet.gate import run_gate

    engine = get_engine(model.engine)
    report = await run_gate(model, spec_dir, candidates, serving, engine.headers(model), engine.upstream_model(model))
    result: dict[str, Any] = report.as_dict()
    return result


class Rollout:
    def __init__(self, spec: YardSpec, spec_dir: Path, supervisor: Supervisor, control: Reconciler,
                 workers: GatewayWorkers, store: Callable[[], Awaitable[Store]],
                 keys: Callable[[YardSpec], dict[str, str]], gate: GateRunner = default_gate) -> None:
        self.spec, self.spec_dir = spec, spec_dir
        self.supervisor, self.control, self.workers = supervisor, control, workers
        self.store, self.keys, self.gate = store, keys, gate
        self._lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def apply(self, text: str, author: str, message: str, progress: Progress, max_surge: int = 1) -> Outcome:
        if self._lock.locked():
            raise ApplyError("another apply is in progress: wait for it (applies are never interleaved)")
        async with self._lock:
            try:
                new = parse_spec(text, source="the applied yard.yaml")
            except SpecError as exc:
                raise ApplyError("\n".join(exc.problems)) from None
            result = plan(self.spec, new)
            for line in describe(result, new):
                progress(line)
            if result.needs_restart:
                raise ApplyError("these changes need `modelyard up` restarted: "
                                 + "; ".join(str(c) for c in result.needs_restart))
            if result.empty:
                return Outcome(True)  # `describe` said "no changes"
            try:
                keys = self.keys(new)
            except Exception as exc:  # a key's variable that is not set, say: refused before anything changes
                raise ApplyError(f"gateway.keys: {exc}") from None
            self._prepare(new, [m.name for m in result.models if m.action in ("add", "replace")])
            outcome = await self._carry_out(result, new, keys, progress, max_surge)
            state = "serving" if outcome.applied else "refused"
            gates = orjson.dumps(outcome.gates).decode() if outcome.gates else ""
            store = await self.store()
            try:
                revision = await store.add_revision(text, author, message, state, gates)
            finally:
                await store.close()
            outcome.revision = revision.seq
            if outcome.applied:
                self.spec = new
            progress(f"revision {revision.seq} ({revision.id}): {state}")
            return outcome

    def _prepare(self, new: YardSpec, names: list[str]) -> None:
        """The engines of the models to start can launch (binary, weights), and a tokenizer the gateway is to load
        is sound, or nothing changes."""
        from modelyard.engines import EngineError, get_engine
        from modelyard.local_tokenizer import LocalTokenizer, TokenizerError

        for name in names:
            model = new.model(name)
            assert model is not None
            try:
                engine = get_engine(model.engine)
                engine.prepare(model)
                directory = engine.tokenizer_dir(model)
                if directory is not None:
                    LocalTokenizer(directory)
            except (EngineError, TokenizerError) as exc:
                raise ApplyError(f"model {name!r}: {exc}") from None

    async def _carry_out(self, result: Plan, new: YardSpec, keys: dict[str, str], progress: Progress,
                         max_surge: int) -> Outcome:
        replaced = result.replaced()
        outcome = Outcome(True)
        for name in replaced:  # gated first: a failure leaves everything as it was
            model = new.model(name)
            assert model is not None
            passed, report = await self._replace(model, progress, max_surge)
            outcome.gates[name] = report
            if not passed:
                outcome.applied = False
                progress(f"{name}: the gate failed; the serving revision keeps serving")
                return outcome
        self._in_place(new, keys, progress)
        return outcome

    def _in_place(self, new: YardSpec, keys: dict[str, str], progress: Progress) -> None:
        """The new spec to the workers and the reconcile loop; models added start, removed ones drain and stop."""
        self.workers.reconfigure(new.model_dump(mode="json"), keys)
        removed = [m for m in self.spec.models if new.model(m.name) is None]
        self.supervisor.spec = new
        self.control.reconfigure(new)
        for model in new.models:
            if self.spec.model(model.name) is None:
                self.supervisor.scale(model, self.supervisor.initial(model))
                progress(f"{model.name}: started")
        for model in removed:
            self.supervisor.scale(model, 0)
            progress(f"{model.name}: draining, then stopped")

    async def _replace(self, model: AnyModel, progress: Progress, max_surge: int) -> tuple[bool, dict[str, Any]]:
        """Rolling: surge new replicas, gate them, retire as many old ones; again until no old one is left."""
        self.control.pause(model.name)
        try:
            old = self.supervisor.staying(model.name)
            report: dict[str, Any] = {"passed": True, "checks": []}
            while old:
                batch = min(max_surge, len(old))
                fresh = [self.supervisor.surge(model) for _ in range(batch)]
                progress(f"{model.name}: {batch} new replica(s) starting beside {len(old)} old")
                problem = await self._until_ready(fresh, model)
                if problem is None:
                    report = await self.gate(model, self.spec_dir, [r.endpoint.url for r in fresh],
                                             [r.endpoint.url for r in old if r.endpoint.ready])
                    problem = None if report.get("passed") else "gate failed"
                else:
                    report = {"passed": False, "checks": [{"name": "ready", "passed": False, "summary": problem}]}
                if problem is not None:
                    await asyncio.gather(*(self.supervisor.retire(r) for r in fresh))
                    progress(f"{model.name}: new replica(s) refused: {problem}")
                    return False, report
                progress(f"{model.name}: new replica(s) passed the gate; draining {batch} old")
                await asyncio.gather(*(self.supervisor.retire(r) for r in old[:batch]))
                old = old[batch:]
            return True, report
        finally:
            self.control.resume(model.name)

    async def _until_ready(self, fresh: list[ReplicaRunner], model: AnyModel) -> str | None:
        deadline = time.monotonic() + model.startup_timeout_s
        while time.monotonic() < deadline:
            if all(r.endpoint.ready for r in fresh):
                return None
            if any(r.endpoint.state.value in ("failed", "unhealthy") for r in fresh):
                break
            await asyncio.sleep(0.25)
        details = "; ".join(f"{r.endpoint.id}: {r.endpoint.state.value} {r.endpoint.detail}" for r in fresh)
        return f"not ready ({details})"


def author() -> str:
    return os.environ.get("USER") or "unknown"
