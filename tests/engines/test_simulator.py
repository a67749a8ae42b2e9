from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest

from modelyard.engines import EngineError, get_engine
from modelyard.engines.simulator import SimulatorEngine
from modelyard.fleet.process import free_port
from modelyard.simulator.profiles import resolve_profile
from modelyard.simulator.run import SimulatorThread
from modelyard.spec.schema import SimulatorModel


def spec(**params: float | int | str | bool) -> SimulatorModel:
    return SimulatorModel(name="sim-a", engine="simulator", profile="tiny-cpu", params=params)


def test_registered_by_name() -> None:
    assert isinstance(get_engine("simulator"), SimulatorEngine)


def test_launch_runs_the_simulator_module_with_the_spec() -> None:
    plan = SimulatorEngine().launch(spec(itl_base_s=0.01, max_num_seqs=8), "127.0.0.1", 9001, replica=2)
    assert plan.argv[:3] == [sys.executable, "-m", "modelyard.simulator"]
    argv = " ".join(plan.argv)
    assert "--host 127.0.0.1 --port 9001 --model sim-a --profile tiny-cpu" in argv
    assert "--param itl_base_s=0.01" in argv and "--param max_num_seqs=8" in argv and "--param seed=2" in argv


def test_prepare_refuses_bad_params() -> None:
    SimulatorEngine().prepare(spec(itl_base_s=0.01))
    with pytest.raises(EngineError, match="unknown simulator parameter"):
        SimulatorEngine().prepare(spec(warp_speed=9))
    with pytest.raises(EngineError, match="unknown simulator profile"):
        SimulatorEngine().prepare(SimulatorModel(name="x", engine="simulator", profile="nope"))


async def _probe(url: str, model: SimulatorModel) -> str | None:
    async with aiohttp.ClientSession() as session:
        return await SimulatorEngine().probe(session, url, model)


def test_probe_passes_against_a_simulator() -> None:
    profile = resolve_profile("tiny-cpu", {"itl_base_s": 0.001})
    with SimulatorThread(profile, "sim-a") as sim:
        assert asyncio.run(_probe(sim.url, spec())) is None
        assert asyncio.run(_probe(sim.url, SimulatorModel(name="other", engine="simulator"))) is not None


def test_launch_plan_starts_a_server_that_probes_healthy() -> None:
    port = free_port()
    plan = SimulatorEngine().launch(spec(itl_base_s=0.001), "127.0.0.1", port, replica=0)
    with subprocess.Popen(plan.argv, stderr=subprocess.DEVNULL) as proc:
        try:
            async def until_ready() -> str | None:
                problem: str | None = "not probed"
                for _ in range(200):
                    problem = await _probe(f"http://127.0.0.1:{port}", spec())
                    if problem is None:
                        break
                    await asyncio.sleep(0.05)
                return problem

            assert asyncio.run(until_ready()) is None
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_kv_events_on_a_model_give_fresh_loopback_addresses_and_the_flags() -> None:
    from modelyard.engines.simulator import SimulatorEngine
    from modelyard.spec.schema import SimulatorModel

    engine = SimulatorEngine()
    off = SimulatorModel(name="m", engine="simulator")
    assert engine.kv_events(off, "127.0.0.1", 0) is None
    on = SimulatorModel(name="m", engine="simulator", kv_events=True, params={"hash_seed": 7})
    events = engine.kv_events(on, "127.0.0.1", 0)
    assert events is not None and events.hash_seed == "7"
    assert events.endpoint.startswith("tcp://127.0.0.1:") and events.replay != events.endpoint
    plan = engine.with_kv_events(on, engine.launch(on, "127.0.0.1", 9000, 0), events)
    at = plan.argv.index("--kv-events")
    assert plan.argv[at + 1:at + 4] == [events.endpoint, "--kv-events-replay", events.replay]
    assert engine.tokenize_path == "/tokenize"


def test_roles_launch_each_replica_in_its_role() -> None:
    from modelyard.spec.loader import parse_spec

    model = parse_spec("models:\n  - {name: m, engine: simulator, roles: {prefill: 1, decode: 2}}\n").models[0]
    engine = get_engine("simulator")
    roles = [engine.launch(model, "127.0.0.1", 9000, replica).argv for replica in range(3)]
    assert [argv[argv.index("--role") + 1] for argv in roles] == ["prefill", "decode", "decode"]
    plain = parse_spec("models:\n  - {name: m, engine: simulator}\n").models[0]
    assert "--role" not in engine.launch(plain, "127.0.0.1", 9000, 0).argv


def test_a_simulator_with_a_local_tokenizer_runs_with_the_same_directory() -> None:
    from modelyard.spec import parse_spec

    spec = parse_spec("models:\n  - name: s\n    engine: simulator\n    tokenizer: local\n    tokenizer_path: /tok\n")
    plan = get_engine("simulator").launch(spec.models[0], "127.0.0.1", 8000, 0)
    assert plan.argv[plan.argv.index("--tokenizer") + 1] == "/tok"
    plain = parse_spec("models:\n  - name: s\n    engine: simulator\n")
    assert "--tokenizer" not in get_engine("simulator").launch(plain.models[0], "127.0.0.1", 8000, 0).argv
