from __future__ import annotations

import sys

import aiohttp

from modelyard.engines.base import EngineError, LaunchPlan, probe_openai
from modelyard.spec.schema import BaseModelSpec, SimulatorModel


class SimulatorEngine:
    """modelyard's own vLLM stand-in, run as `python -m modelyard.simulator` with the spec's profile and params."""

    name = "simulator"

    def prepare(self, model: BaseModelSpec) -> None:
        from modelyard.simulator.profiles import resolve_profile

        assert isinstance(model, SimulatorModel)
        try:
            resolve_profile(model.profile, model.params)
        except ValueError as exc:
            raise EngineError(str(exc)) from None

    def launch(self, model: BaseModelSpec, host: str, port: int, replica: int) -> LaunchPlan:
        assert isinstance(model, SimulatorModel)
        argv = [sys.executable, "-m", "modelyard.simulator", "--host", host, "--port", str(port),
                "--model", model.name, "--profile", model.profile]
        for key, value in sorted(model.params.items()):
            argv += ["--param", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
        seed = model.params.get("seed")
        if seed is None:
            argv += ["--param", f"seed={replica}"]  # replicas differ in their jitter and failure draws
        return LaunchPlan(argv=argv, env={"PYTHONUNBUFFERED": "1"})

    def external_url(self, model: BaseModelSpec, replica: int) -> str | None:
        return None

    async def probe(self, session: aiohttp.ClientSession, base_url: str, model: BaseModelSpec) -> str | None:
        return await probe_openai(session, base_url, model.name)
