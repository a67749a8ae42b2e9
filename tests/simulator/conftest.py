from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest

from modelyard.simulator.profiles import resolve_profile
from modelyard.simulator.run import SimulatorThread

# fast numbers: a few milliseconds a step, so a test's requests finish in well under a second
FAST = {"itl_base_s": 0.002, "prefill_overhead_s": 0.001, "prefill_s_per_token": 0.0}

StartSimulator = Callable[..., SimulatorThread]


@pytest.fixture
def start_simulator() -> Iterator[StartSimulator]:
    started: list[SimulatorThread] = []

    def start(**params: object) -> SimulatorThread:
        profile = resolve_profile("tiny-cpu", {**FAST, **params})
        sim = SimulatorThread(profile, model_name="sim").start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(start_simulator: StartSimulator) -> SimulatorThread:
    return start_simulator()


def client_for(sim: SimulatorThread, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0, **kwargs)  # type: ignore[arg-type]
