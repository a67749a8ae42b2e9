"""modelyard/fleet/child_env.py: what a replica's, redis-server's and a gateway worker's environment holds, and
what it never does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from modelyard.engines import LaunchPlan, get_engine
from modelyard.fleet.child_env import child_env, replica_env, secret_names, worker_env
from modelyard.fleet.process import open_log, spawn, terminate
from modelyard.spec.schema import YardSpec

OURS = {"PATH": "/usr/bin", "HOME": "/home/op", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TMPDIR": "/tmp/x",
        "PYTHONPATH": "/src", "CUDA_HOME": "/usr/local/cuda", "NVIDIA_VISIBLE_DEVICES": "all",
        "MODELYARD_API_KEY": "api-secret", "MODELYARD_ADMIN_KEY": "admin-secret", "TEAM_A_KEY": "team-secret",
        "UPSTREAM_KEY": "upstream-secret", "AWS_SECRET_ACCESS_KEY": "aws-secret", "VLLM_LOGGING_LEVEL": "DEBUG",
        "VLLM_API_KEY": "named-as-a-secret", "DATABASE_URL": "postgresql://u:p@db/x"}


def spec() -> YardSpec:
    return YardSpec.model_validate({"version": 1, "gateway": {
        "keys": [{"name": "team-a", "key_env": "TEAM_A_KEY"}, {"name": "vllm-named", "key_env": "VLLM_API_KEY"}]},
        "models": [{"name": "ext", "engine": "openai", "urls": ["http://127.0.0.1:9"], "api_key_env": "UPSTREAM_KEY"},
                   {"name": "q", "engine": "vllm", "model": {"path": "/weights"}},
                   {"name": "sim", "engine": "simulator"}]})


def test_the_spec_names_every_secret() -> None:
    assert secret_names(spec()) >= {"MODELYARD_API_KEY", "MODELYARD_ADMIN_KEY", "TEAM_A_KEY", "VLLM_API_KEY",
                                    "UPSTREAM_KEY"}


@pytest.mark.parametrize("name", ["q", "sim"])
def test_a_replica_gets_the_basics_and_its_engines_own_and_no_secret(name: str) -> None:
    yard = spec()
    model = yard.model(name)
    assert model is not None
    engine = get_engine(model.engine)
    plan = engine.launch(model, "127.0.0.1", 8000, 0)
    assert plan is not None
    env = replica_env(engine, model, plan, secret_names(yard), source=OURS)
    assert not {v for v in env.values()} & {"api-secret", "admin-secret", "team-secret", "upstream-secret",
                                            "aws-secret", "named-as-a-secret", "postgresql://u:p@db/x"}
    assert {k: env[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")} == {
        k: OURS[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")}
    assert all(env[k] == v for k, v in plan.env.items())  # the launch plan's own, on top
    if name == "q":
        assert env["CUDA_HOME"] == "/usr/local/cuda" and env["VLLM_LOGGING_LEVEL"] == "DEBUG"


def test_a_models_own_secret_reaches_its_replica_only() -> None:
    class Keyed(type(get_engine("simulator"))):  # type: ignore[misc]
        def secret_env(self, model: object) -> tuple[str, ...]:
            return ("UPSTREAM_KEY",)

    yard = spec()
    model = yard.model("sim")
    assert model is not None
    env = replica_env(Keyed(), model, LaunchPlan(["x"]), secret_names(yard), source=OURS)
    assert env["UPSTREAM_KEY"] == "upstream-secret" and "TEAM_A_KEY" not in env


def test_redis_and_any_other_child_gets_the_basics_only() -> None:
    env = child_env(source=OURS)
    assert set(env) == {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH"}


def test_a_gateway_worker_gets_the_basics_our_settings_and_no_secret() -> None:
    ours = {**OURS, "MODELYARD_GC": "default", "PGSSLMODE": "require", "PYTHONHASHSEED": "0"}
    env = worker_env(spec(), {"PROMETHEUS_MULTIPROC_DIR": "/m"}, source=ours)
    assert set(env) == {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "MODELYARD_GC", "PGSSLMODE",
                        "PYTHONHASHSEED", "PROMETHEUS_MULTIPROC_DIR"}  # MODELYARD_API_KEY and _ADMIN_KEY: withheld


def test_a_spawned_child_has_exactly_that_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_ADMIN_KEY", "admin-secret")  # ours; on main every child inherited it
    out = tmp_path / "env.txt"

    async def body() -> None:
        with open_log(tmp_path / "child.log") as log:
            process = await spawn(["/usr/bin/env"], child_env({"OWN": "1"}), log)
        await asyncio.wait_for(process.wait(), 10)
        await terminate(process)
    asyncio.run(body())
    out = tmp_path / "child.log"
    lines = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert lines["OWN"] == "1" and "MODELYARD_ADMIN_KEY" not in lines
