from __future__ import annotations

import sys

from modelyard.engines.base import EngineError, KVEvents, LaunchPlan, Task
from modelyard.engines.vllm import METRICS as VLLM_METRICS
from modelyard.engines.vllm import VLLMSleep
from modelyard.spec.schema import BaseModelSpec, SimulatorModel


class SimulatorEngine(VLLMSleep):
    """modelyard's own vLLM stand-in, run as `python -m modelyard.simulator` with the spec's profile and params."""

    name = "simulator"
    tasks = frozenset(Task)
    metrics = VLLM_METRICS  # the same names and sleep mode as vLLM
    tokenize_path = "/tokenize"
    can_disaggregate = True  # `--role prefill|decode`: vLLM's NIXL connector protocol, simulated

    def slots(self, model: BaseModelSpec) -> int:
        from modelyard.simulator.profiles import resolve_profile

        assert isinstance(model, SimulatorModel)
        try:
            return resolve_profile(model.profile, model.params).max_num_seqs
        except ValueError:
            return self.default_slots

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
        if model.task:
            argv += ["--task", model.task]
        if (role := model.role_of(replica)) is not None:
            argv += ["--role", role]
        tokenizer = self.tokenizer_dir(model)
        if tokenizer is not None:  # the same tokenizer as the gateway's: its block keys are the events' keys
            argv += ["--tokenizer", str(tokenizer)]
        return LaunchPlan(argv=argv, env={"PYTHONUNBUFFERED": "1"})

    def publishes_kv_events(self, model: BaseModelSpec) -> bool:
        assert isinstance(model, SimulatorModel)
        return model.kv_events

    def kv_events(self, model: BaseModelSpec, host: str, replica: int) -> KVEvents | None:
        from modelyard.fleet.process import free_port

        assert isinstance(model, SimulatorModel)
        return self.kv_events_at(model, host, free_port(host), free_port(host)) if model.kv_events else None

    def kv_events_at(self, model: BaseModelSpec, host: str, port: int, replay_port: int) -> KVEvents | None:
        assert isinstance(model, SimulatorModel)
        if not model.kv_events:
            return None
        return KVEvents(endpoint=f"tcp://{host}:{port}", replay=f"tcp://{host}:{replay_port}",
                        hash_seed=str(model.params.get("hash_seed", "0")))

    def with_kv_events(self, model: BaseModelSpec, plan: LaunchPlan, events: KVEvents) -> LaunchPlan:
        argv = [*plan.argv, "--kv-events", events.endpoint, "--kv-events-replay", events.replay or "none",
                "--kv-events-topic", events.topic]
        return LaunchPlan(argv=argv, env=plan.env, mounts=plan.mounts)

    def container_launch(self, model: BaseModelSpec, host: str, port: int) -> LaunchPlan:
        plan = self.launch(model, host, port, replica=0)
        return LaunchPlan(argv=["python3", *plan.argv[1:]], env=plan.env)  # the image's Python, not this one

