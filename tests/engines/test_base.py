"""The adapter seam's shared parts: the probe of each task against a real (simulated) server, and the names."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from modelyard.engines import ENGINES, get_engine
from modelyard.engines.base import Task, probe_task
from modelyard.simulator.profiles import resolve_profile
from modelyard.simulator.run import SimulatorThread
from modelyard.spec.schema import ENGINE_NAMES, OpenAIModel


def test_every_engine_of_the_spec_has_an_adapter_of_that_name() -> None:
    assert set(ENGINES) == set(ENGINE_NAMES)
    assert all(get_engine(name).name == name for name in ENGINE_NAMES)


async def _probe(url: str, model: str, task: Task) -> str | None:
    async with aiohttp.ClientSession() as session:
        return await probe_task(session, url, model, task)


@pytest.mark.parametrize("task", list(Task))
def test_each_task_is_probed_through_an_endpoint_it_serves(task: Task) -> None:
    profile = resolve_profile("tiny-cpu", {"itl_base_s": 0.001, "task": task.value})
    with SimulatorThread(profile, "sim") as sim:
        assert asyncio.run(_probe(sim.url, "sim", task)) is None
        others = [t for t in Task if t is not task and not (task is Task.EMBEDDING and t is Task.RERANK)]
        for other in others:  # a server that does another task does not pass, and says why
            problem = asyncio.run(_probe(sim.url, "sim", other))
            assert problem is not None and "answered 404" in problem


def test_an_external_servers_key_is_a_header_and_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTE_KEY", "sk-remote")
    model = OpenAIModel(name="r", engine="openai", urls=("http://10.0.0.5:8000",), api_key_env="REMOTE_KEY",
                        upstream_model="meta/llama")
    engine = get_engine("openai")
    assert engine.headers(model) == {"Authorization": "Bearer sk-remote"}
    assert engine.secret_env(model) == ("REMOTE_KEY",) and engine.upstream_model(model) == "meta/llama"
    assert engine.launch(model, "127.0.0.1", 1, 0) is None and engine.external_url(model, 0) == "http://10.0.0.5:8000"
