"""A replica's watch loop against an engine that freezes (SIGSTOP): unhealthy within the model's timeouts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from modelyard.engines.base import EngineAdapter
from modelyard.fleet.replica import ReplicaRunner
from modelyard.routing.endpoints import Endpoint, ReplicaState
from modelyard.spec.loader import parse_spec
from modelyard.spec.schema import BaseModelSpec

ENGINE_TIMEOUT_S = 5.0  # what the real adapters' /health allows (engines/base.py)


class FreezingEngine(EngineAdapter):
    """Answers until frozen; then, like a stopped process, every check waits out its own timeout."""

    name = "openai"

    def __init__(self) -> None:
        self.frozen = False

    def external_url(self, model: BaseModelSpec, replica: int) -> str | None:
        return "http://127.0.0.1:9"

    async def _answer(self) -> str | None:
        if not self.frozen:
            return None
        await asyncio.sleep(ENGINE_TIMEOUT_S)
        return "TimeoutError"

    async def health(self, session: aiohttp.ClientSession, base_url: str, model: BaseModelSpec) -> str | None:
        return await self._answer()

    async def probe(self, session: aiohttp.ClientSession, base_url: str, model: BaseModelSpec) -> str | None:
        return await self._answer()


def model(first_byte_s: float) -> BaseModelSpec:
    spec = parse_spec(f"""
version: 1
models:
  - name: m
    engine: openai
    urls: [http://127.0.0.1:9]
    watchdog_s: null
    timeouts: {{first_byte_s: {first_byte_s}}}
""")
    return spec.models[0]


async def _frozen_until_unhealthy(tmp: Path, ejected: bool, bound_s: float) -> float:
    engine = FreezingEngine()
    endpoint = Endpoint(model="m", replica=0, url="")
    async with aiohttp.ClientSession() as session:
        runner = ReplicaRunner(endpoint, model(first_byte_s=2), engine, "127.0.0.1", tmp, session,
                               health_interval_s=0.2)
        task = asyncio.create_task(runner.run())
        try:
            while not endpoint.ready:
                await asyncio.sleep(0.05)
            engine.frozen = True
            if ejected:  # the gateway saw it time out and ejected it: its probe is the first check of each round
                endpoint.ejected_until = time.monotonic() + 60
            frozen_at = time.monotonic()
            while endpoint.state is ReplicaState.READY and time.monotonic() - frozen_at < bound_s:
                await asyncio.sleep(0.05)
            assert endpoint.state is ReplicaState.UNHEALTHY, endpoint.detail
            engine.frozen = False  # thawed (SIGCONT): it passes its probe and serves again
            while not endpoint.ready:
                await asyncio.sleep(0.05)
            return time.monotonic() - frozen_at
        finally:
            runner.stopping = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_a_frozen_replica_is_unhealthy_within_its_timeouts(tmp_path: Path) -> None:
    # first_byte_s 2: before, three failed /health of 5 s each (15 s and more); now two checks of 1.5 s (the floor)
    asyncio.run(_frozen_until_unhealthy(tmp_path, ejected=False, bound_s=3 * ENGINE_TIMEOUT_S - 1))


def test_a_frozen_replica_that_the_gateway_ejected_is_unhealthy_within_its_timeouts(tmp_path: Path) -> None:
    # before: each round waited for the ejected probe (10 s) and then /health (5 s), three rounds
    asyncio.run(_frozen_until_unhealthy(tmp_path, ejected=True, bound_s=3 * ENGINE_TIMEOUT_S - 1))
