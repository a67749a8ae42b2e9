"""One replica kept alive: launched, probed until it does its task, watched, restarted when it dies; and, when the
reconcile loop asks, drained, put to sleep, woken, stopped (fleet/supervisor.py is the actuator that asks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import aiohttp

from modelyard.engines import EngineAdapter, EngineError
from modelyard.fleet.child_env import replica_env
from modelyard.fleet.process import free_port, open_log, spawn, terminate
from modelyard.routing.endpoints import Endpoint, ReplicaState
from modelyard.spec.schema import BaseModelSpec

log = logging.getLogger("modelyard.fleet")
EJECTED_PROBE_TIMEOUT_S = 10.0
HUNG_AFTER_S = 10.0  # a ready replica that passes no check for this long (or its first_byte_s, if shorter) is unhealthy
MIN_HUNG_AFTER_S = 3.0  # however short first_byte_s: each check may take half of it (a loaded engine answers late)
DRAIN_GRACE_S = 0.5  # the gateway workers see a draining replica within this (feed 0.1 s, in-flight reports 0.25 s)
PAUSED = frozenset({ReplicaState.DRAINING, ReplicaState.ASLEEP})  # not probed: the actuator owns them now


class Backoff:
    """Exponential restart delay; reset once a replica has stayed up for `reset_after_s`."""

    def __init__(self, initial_s: float = 1.0, max_s: float = 30.0, reset_after_s: float = 60.0) -> None:
        self.initial_s, self.max_s, self.reset_after_s = initial_s, max_s, reset_after_s
        self.current_s = initial_s

    def next_delay(self, uptime_s: float) -> float:
        if uptime_s >= self.reset_after_s:
            self.current_s = self.initial_s
        delay = self.current_s
        self.current_s = min(self.current_s * 2, self.max_s)
        return delay


class ReplicaRunner:
    """Keeps one replica alive: launch, wait until it generates, watch it, restart it when it dies."""

    def __init__(self, endpoint: Endpoint, model: BaseModelSpec, engine: EngineAdapter, host: str,
                 log_dir: Path, session: aiohttp.ClientSession, health_interval_s: float = 2.0,
                 backoff: Backoff | None = None, withheld: frozenset[str] = frozenset()) -> None:
        self.endpoint, self.model, self.engine, self.host = endpoint, model, engine, host
        self.withheld = withheld  # the spec's secrets: never in the replica's environment
        self.log_path = log_dir / f"{model.name.replace('/', '_')}-{endpoint.replica}.log"
        self.session = session
        self.health_interval_s = health_interval_s
        self.backoff = backoff or Backoff()
        self.process: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.deadline = 0.0  # while starting or waking: when it must be ready by
        self.acting = False  # the engine is being put to sleep or woken: not probed meanwhile
        self._watched_at = time.monotonic()  # the last watchdog probe of a ready replica
        self._passed_at = time.monotonic()  # the last check that a ready replica passed
        self._told = ""  # the last probe failure written to the logs, each new one once

    async def run(self) -> None:
        while not self.stopping:
            started = time.monotonic()
            try:
                await self._run_once()
            except EngineError as exc:
                self._set(ReplicaState.FAILED, str(exc))
                log.error("%s: %s", self.endpoint.id, exc)
            if self.stopping:
                break
            self.endpoint.restarts += 1
            delay = self.backoff.next_delay(time.monotonic() - started)
            self._set(ReplicaState.RESTARTING, f"restart #{self.endpoint.restarts} in {delay:.0f}s")
            await asyncio.sleep(delay)

    async def _run_once(self) -> None:
        external = self.engine.external_url(self.model, self.endpoint.replica)
        events = self.engine.kv_events(self.model, self.host, self.endpoint.replica)
        self.endpoint.kv_events = events.endpoint if events else None
        self.endpoint.kv_replay = events.replay if events else None
        self.endpoint.kv_topic = events.topic if events else ""
        self.endpoint.kv_hash_seed = events.hash_seed if events else None
        if external is not None:
            self.endpoint.url = external
            await self._watch(None)
            return
        port = free_port(self.host)
        self.endpoint.url = f"http://{self.host}:{port}"
        plan = self.engine.launch(self.model, self.host, port, self.endpoint.replica)
        assert plan is not None
        if events is not None:
            plan = self.engine.with_kv_events(self.model, plan, events)
        with open_log(self.log_path) as logfile:
            logfile.write(f"\n=== modelyard: starting {self.endpoint.id} on port {port}: "
                          f"{' '.join(plan.argv)}\n".encode())
            self.process = await spawn(plan.argv, replica_env(self.engine, self.model, plan, self.withheld), logfile)
        self.endpoint.pid = self.process.pid
        self._set(ReplicaState.STARTING, f"pid {self.process.pid}, port {port}")
        try:
            await self._watch(self.process)
        finally:
            self.endpoint.pid = None
            if self.process.returncode is None:
                await terminate(self.process)

    async def _watch(self, process: asyncio.subprocess.Process | None) -> None:
        self.deadline = time.monotonic() + self.model.startup_timeout_s
        failures = 0
        while not self.stopping:
            if process is not None and process.returncode is not None:
                self._set(ReplicaState.RESTARTING, f"exited with code {process.returncode}")
                log.warning("%s exited with code %s (log: %s)", self.endpoint.id, process.returncode, self.log_path)
                return
            if self.endpoint.state in PAUSED or self.acting:
                await self._sleep_or_exit(process, 0.25)
                continue
            problem = await self._check()
            if problem is None:
                failures = 0
                self._passed_at = time.monotonic()
                if not self.endpoint.ready:
                    self._set(ReplicaState.READY, "")
                    self._told = ""
                    log.info("%s ready at %s", self.endpoint.id, self.endpoint.url)
            elif self.endpoint.state in (ReplicaState.STARTING, ReplicaState.WAKING):
                if time.monotonic() > self.deadline:
                    why = f"not ready in time: {problem}"
                    self._set(ReplicaState.UNHEALTHY, why)
                    self._tell(why)
                    return
                self._starting(problem)
            else:
                failures += 1
                if self.endpoint.ready and (failures >= 3 or self._silent_s() >= self.hung_after_s):
                    self._set(ReplicaState.UNHEALTHY, problem)
                    log.warning("%s unhealthy: %s", self.endpoint.id, problem)
            interval = self.health_interval_s if self.endpoint.ready else 0.25
            await self._sleep_or_exit(process, interval)

    @property
    def hung_after_s(self) -> float:
        """How long a ready replica may fail its checks (a frozen one: each waits out its timeout) before it is
        unhealthy, three failures or not: within the model's own first-byte timeout."""
        return max(MIN_HUNG_AFTER_S, min(HUNG_AFTER_S, self.model.timeouts.first_byte_s))

    def _silent_s(self) -> float:
        return time.monotonic() - self._passed_at

    def _starting(self, problem: str) -> None:
        """A replica that does not pass its probe yet says why, on its status line and in its logs."""
        pid = f"pid {self.endpoint.pid}, " if self.endpoint.pid else ""
        self.endpoint.detail = f"{pid}probe: {problem}"
        self._tell(f"probe: {problem}")

    def _tell(self, message: str) -> None:
        if message == self._told:
            return
        self._told = message
        log.info("%s: %s", self.endpoint.id, message)
        with open_log(self.log_path) as logfile:
            logfile.write(f"=== modelyard: {self.endpoint.id}: {message}\n".encode())

    async def _check(self) -> str | None:
        if self.endpoint.ready and self.endpoint.ejected_until > time.monotonic():
            problem = await self._probe_ejected()
            if problem is not None and self._silent_s() + self.health_interval_s >= self.hung_after_s:
                return problem  # no answer since long enough: this round failed, without waiting for /health too
        if self.endpoint.ready:
            try:  # bounded here too: a frozen replica must fail two checks within `hung_after_s`
                problem = await asyncio.wait_for(self.engine.health(self.session, self.endpoint.url, self.model),
                                                 self.hung_after_s / 2)
            except TimeoutError:
                problem = "health check timed out"
            return problem if problem is not None else await self._watchdog()
        return await self.engine.probe(self.session, self.endpoint.url, self.model)

    async def _watchdog(self) -> str | None:
        """Every `watchdog_s`, a ready replica does its task for real (a /health that answers is not enough): two
        failures in a row take it out of service at once; it comes back when its probe passes again."""
        every = self.model.watchdog_s
        if not every or time.monotonic() - self._watched_at < every:
            return None
        self._watched_at = time.monotonic()
        for attempt in range(2):
            started = time.perf_counter()
            problem = await self.engine.probe(self.session, self.endpoint.url, self.model)
            if problem is None:
                self.endpoint.watchdog_s = time.perf_counter() - started
                return None
            if attempt == 0:
                await asyncio.sleep(1.0)
        self.endpoint.watchdog_s = -1.0
        self._set(ReplicaState.UNHEALTHY, f"watchdog: {problem}")
        log.warning("%s: watchdog: %s", self.endpoint.id, problem)
        return problem

    async def _probe_ejected(self) -> str | None:
        """Active probing: a replica the gateway ejected comes back as soon as it generates again."""
        try:
            problem = await asyncio.wait_for(self.engine.probe(self.session, self.endpoint.url, self.model),
                                             min(EJECTED_PROBE_TIMEOUT_S, self.hung_after_s / 2))
        except TimeoutError:
            problem = "probe timed out"
        if problem is None:
            self.endpoint.ejected_until = 0.0
            self.endpoint.ejections = 0
            self.endpoint.consecutive_failures = 0
            log.info("%s: generates again, back from ejection", self.endpoint.id)
        return problem

    async def _sleep_or_exit(self, process: asyncio.subprocess.Process | None, seconds: float) -> None:
        if process is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), seconds)

    def _set(self, state: ReplicaState, detail: str) -> None:
        self.endpoint.state = state
        self.endpoint.detail = detail

    async def stop(self) -> None:
        self.stopping = True
        if self.process is not None:
            await terminate(self.process)
        self._set(ReplicaState.STOPPED, "")

    async def drain(self, timeout_s: float, then: str) -> bool:
        """Takes no new requests and waits for those in flight to finish (True), or for `timeout_s` (False)."""
        self._set(ReplicaState.DRAINING, f"finishing its requests, then {then}")
        await asyncio.sleep(DRAIN_GRACE_S)
        deadline = time.monotonic() + timeout_s
        while self.endpoint.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return self.endpoint.in_flight <= 0

    async def sleep(self, level: int, drain_s: float) -> str | None:
        """Drained, then the engine's sleep mode; None when asleep, else why not (it serves again)."""
        await self.drain(drain_s, "sleep")
        problem = await self.engine.sleep(self.session, self.endpoint.url, self.model, level)
        if problem is None:
            self._set(ReplicaState.ASLEEP, f"level {level}")
        else:
            self._set(ReplicaState.READY, "")
            log.warning("%s did not go to sleep: %s", self.endpoint.id, problem)
        return problem

    async def wake(self) -> str | None:
        """The engine woken, then probed until it serves (the watch loop marks it ready); None when woken."""
        self._set(ReplicaState.WAKING, "")
        self.acting = True
        try:
            problem = await self.engine.wake(self.session, self.endpoint.url, self.model)
        finally:
            self.acting = False
        self.deadline = time.monotonic() + self.model.startup_timeout_s
        if problem is not None:
            self._set(ReplicaState.UNHEALTHY, f"did not wake: {problem}")
            log.warning("%s did not wake: %s", self.endpoint.id, problem)
        return problem
