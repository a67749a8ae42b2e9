from __future__ import annotations

import os

from modelyard.engines.base import EngineAdapter, EngineError, KVEvents, Task
from modelyard.spec.schema import BaseModelSpec, OpenAIModel


class OpenAIEngine(EngineAdapter):
    """Any OpenAI-compatible server that runs elsewhere: modelyard probes and routes to it, never launches it."""

    name = "openai"
    tasks = frozenset(Task)
    health_path = None  # OpenAI's API has no health endpoint: the probe is a real request
    runs_here = False

    def slots(self, model: BaseModelSpec) -> int:
        assert isinstance(model, OpenAIModel)
        return model.slots

    def prepare(self, model: BaseModelSpec) -> None:
        assert isinstance(model, OpenAIModel)
        if model.api_key_env and not os.environ.get(model.api_key_env):
            raise EngineError(f"environment variable {model.api_key_env} (api_key_env) is not set")

    def external_url(self, model: BaseModelSpec, replica: int) -> str | None:
        assert isinstance(model, OpenAIModel)
        return model.urls[replica % len(model.urls)]

    def publishes_kv_events(self, model: BaseModelSpec) -> bool:
        assert isinstance(model, OpenAIModel)
        return model.kv_events is not None

    def tokenizer(self, model: BaseModelSpec) -> str | None:
        return "/tokenize" if self.publishes_kv_events(model) else None  # a server with KV events is vLLM's

    def kv_events(self, model: BaseModelSpec, host: str, replica: int) -> KVEvents | None:
        assert isinstance(model, OpenAIModel)
        if model.kv_events is None:
            return None
        at = replica % len(model.urls)
        return KVEvents(endpoint=model.kv_events[at], replay=model.kv_replay[at] if model.kv_replay else None,
                        hash_seed=model.kv_hash_seed)

    def headers(self, model: BaseModelSpec) -> dict[str, str]:
        """What every request to the external server carries: its key, read from `api_key_env`."""
        assert isinstance(model, OpenAIModel)
        return {"Authorization": f"Bearer {os.environ.get(model.api_key_env, '')}"} if model.api_key_env else {}

    def upstream_model(self, model: BaseModelSpec) -> str | None:
        assert isinstance(model, OpenAIModel)
        return model.upstream_model

    def secret_env(self, model: BaseModelSpec) -> tuple[str, ...]:
        assert isinstance(model, OpenAIModel)
        return (model.api_key_env,) if model.api_key_env else ()
