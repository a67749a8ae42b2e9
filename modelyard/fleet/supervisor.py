"""The actuator of the control plane: runs the replicas that the reconcile loop wants (fleet/reconciler.py) on this
machine, scales a model up (new replicas) and down (drained first), puts pool members to sleep and wakes them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp

from modelyard.engines import EngineError, LaunchPlan, get_engine
from modelyard.fleet.child_env import secret_names
from modelyard.fleet.process import free_port
from modelyard.fleet.replica import ReplicaRunner
from modelyard.local_tokenizer import TokenizerError, load_tokenizers
from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState
from modelyard.spec.schema import AnyModel, BaseModelSpec, YardSpec

log = logging.getLogger("modelyard.fleet")
Key = tuple[str, int]


def prewarmed(spec: YardSpec) -> set[str]:
    """The pool members started with `up`: the pinned ones, then the others in order while the pool has room."""
    out: set[str] = set()
    for pool in spec.pools:
        used = 0.0
        for name in (*pool.pinned, *(m for m in pool.members if m not in pool.pinned)):
            model = spec.model(name)
            size = 1.0 if pool.slots is not None else (model.memory_gib or 0.0) if model else 0.0
            room = float(pool.slots) if pool.slots is not None else (pool.memory_gib or 0.0)
            if name in pool.pinned or used + size <= room:
                out.add(name)
                used += size
    return out


class Supervisor:
    """Runs the replicas of every model in the spec: fixed ones from the start, the rest as asked."""

    def __init__(self, spec: YardSpec, table: EndpointTable, state_dir: Path, host: str = "127.0.0.1",
                 health_interval_s: float = 2.0) -> None:
        self.spec, self.table, self.host = spec, table, host
        self.log_dir = state_dir / "logs"
        self.health_interval_s = health_interval_s
        self.runners: dict[Key, ReplicaRunner] = {}
        self.leaving: set[Key] = set()  # draining before they stop
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._actions: set[asyncio.Task[None]] = set()
        self._retiring: dict[Key, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def prepare(self) -> None:
        """Checks that every engine can launch (binary, weights), and that a tokenizer the gateway loads is there
        and sound, before anything starts."""
        problems = []
        for model in self.spec.models:
            try:
                get_engine(model.engine).prepare(model)
            except EngineError as exc:
                problems.append(f"model {model.name!r}: {exc}")
        try:
            load_tokenizers(self.spec)
        except TokenizerError as exc:
            problems.append(str(exc))
        if problems:
            raise EngineError("\n".join(problems))

    def initial(self, model: BaseModelSpec) -> int:
        """Replicas started with `up`: a fixed count, an autoscaled model's min, a pool member if it has room."""
        if self.spec.pool_of(model.name) is not None:
            return 1 if model.name in prewarmed(self.spec) else 0
        return model.min_replicas

    def plans(self) -> list[tuple[str, AnyModel, LaunchPlan | str]]:
        """For `up --dry-run`: each replica's id, model and what starting it runs (or the URL of an external one,
        or why it cannot start), through the same adapter calls as `start`; the ports are picked free, as at start.
        An autoscaled model shows its most replicas; a pool member its one."""
        out: list[tuple[str, AnyModel, LaunchPlan | str]] = []
        for model in self.spec.models:
            engine = get_engine(model.engine)
            for index in range(model.max_replicas):
                replica_id = f"{model.name}/{index}"
                try:
                    external = engine.external_url(model, index)
                    plan = external or engine.launch(model, self.host, free_port(self.host), index)
                except EngineError as exc:
                    plan = f"cannot start: {exc}"
                out.append((replica_id, model, plan if plan is not None else "not launched by modelyard"))
        return out

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        for model in self.spec.models:
            for index in range(self.initial(model)):
                self._launch(model, index)

    def surge(self, model: AnyModel) -> ReplicaRunner:
        """One more replica of `model` (a new revision's, beside the old ones), on the lowest free number."""
        taken = {k[1] for k in self.runners if k[0] == model.name}
        index = next(i for i in range(len(taken) + 1) if i not in taken)
        self._launch(model, index)
        return self.runners[(model.name, index)]

    def retire(self, runner: ReplicaRunner) -> asyncio.Future[Any]:
        """Drained (its streams finish), then stopped, in the background; the returned future says when it is gone."""
        key = (runner.endpoint.model, runner.endpoint.replica)
        if key in self.leaving:
            return self._retiring.get(key) or asyncio.get_running_loop().create_future()
        self.leaving.add(key)  # at once: the count of those staying is right from now on
        task = self._in_background(self._retire(runner))
        self._retiring[key] = task
        task.add_done_callback(lambda _: self._retiring.pop(key, None))
        return task

    def _launch(self, model: AnyModel, index: int) -> None:
        assert self._session is not None
        engine = get_engine(model.engine)
        endpoint = Endpoint(model=model.name, replica=index, url="", upstream_model=engine.upstream_model(model),
                            headers=engine.headers(model), tokenize_path=engine.tokenizer(model),
                            role=model.role_of(index))
        self.table.add(endpoint)
        runner = ReplicaRunner(endpoint, model, engine, self.host, self.log_dir, self._session,
                               self.health_interval_s, withheld=secret_names(self.spec))
        self.runners[(model.name, index)] = runner
        self._tasks[(model.name, index)] = asyncio.create_task(runner.run(), name=f"replica {endpoint.id}")

    def runner(self, model: str, replica: int) -> ReplicaRunner | None:
        return self.runners.get((model, replica))

    def staying(self, model: str) -> list[ReplicaRunner]:
        """The model's replicas that are not on their way out, by index."""
        return sorted((r for k, r in self.runners.items() if k[0] == model and k not in self.leaving),
                      key=lambda r: r.endpoint.replica)

    def scale(self, model: AnyModel, replicas: int) -> None:
        """Starts replicas up to `replicas`, or drains and stops the surplus (those not serving first, then the
        highest numbered); returns at once, the work goes on in the background."""
        staying = self.staying(model.name)
        if len(staying) < replicas:
            taken = {k[1] for k in self.runners if k[0] == model.name}
            free = (i for i in range(len(taken) + replicas) if i not in taken)
            for _ in range(replicas - len(staying)):
                self._launch(model, next(free))
            return
        surplus = sorted(staying, key=lambda r: (r.endpoint.ready, -r.endpoint.replica))
        for runner in surplus[:len(staying) - replicas]:
            self.retire(runner)

    def act(self, model: AnyModel, kind: str, sleep_level: int = 1) -> None:
        """A pool member's change: "wake" or "sleep" (the engine's sleep mode), "start" or "stop" (the process)."""
        runner = self.runner(model.name, 0)
        if kind == "start" and runner is None:
            self._launch(model, 0)
        elif kind == "stop" and runner is not None:
            self.retire(runner)
        elif kind == "sleep" and runner is not None:
            self._in_background(self._sleep(runner, sleep_level))
        elif kind == "wake" and runner is not None:
            self._in_background(self._wake(runner))

    async def _sleep(self, runner: ReplicaRunner, level: int) -> None:
        await runner.sleep(level, runner.model.timeouts.total_s)

    async def _wake(self, runner: ReplicaRunner) -> None:
        await runner.wake()

    async def _retire(self, runner: ReplicaRunner) -> None:
        key = (runner.endpoint.model, runner.endpoint.replica)
        try:
            if runner.endpoint.state is not ReplicaState.ASLEEP:
                await runner.drain(runner.model.timeouts.total_s, "stop")
            await runner.stop()
            task = self._tasks.pop(key, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            self.runners.pop(key, None)
            self.leaving.discard(key)
            self.table.remove(runner.endpoint)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)
        return task

    async def stop(self) -> None:
        for task in list(self._actions):
            task.cancel()
        await asyncio.gather(*self._actions, return_exceptions=True)
        runners = list(self.runners.values())
        for runner in runners:
            runner.stopping = True
        await asyncio.gather(*(runner.stop() for runner in runners), return_exceptions=True)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
