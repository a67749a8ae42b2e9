from __future__ import annotations

import os

import aiohttp

from modelyard.engines.base import EngineError, LaunchPlan, probe_openai
from modelyard.spec.schema import BaseModelSpec, OpenAIModel


def auth_headers(model: OpenAIModel) -> dict[str, str]:
    """What every request to the external server carries: its key, read from `api_key_env`."""
    return {"Authorization": f"Bearer {os.environ.get(model.api_key_env, '')}"} if model.api_key_env else {}


class OpenAIEngine:
    """Any OpenAI-compatible server that runs elsewhere: modelyard probes and routes to it, never launches it."""

    name = "openai"

    def prepare(self, model: BaseModelSpec) -> None:
        assert isinstance(model, OpenAIModel)
        if model.api_key_env and not os.environ.get(model.api_key_env):
            raise EngineError(f"environment variable {model.api_key_env} (api_key_env) is not set")

    def launch(self, model: BaseModelSpec, host: str, port: int, replica: int) -> LaunchPlan | None:
        return None

    def external_url(self, model: BaseModelSpec, replica: int) -> str | None:
        assert isinstance(model, OpenAIModel)
        return model.urls[replica % len(model.urls)]

    async def probe(self, session: aiohttp.ClientSession, base_url: str, model: BaseModelSpec) -> str | None:
        assert isinstance(model, OpenAIModel)
        return await probe_openai(session, base_url, model.upstream_model or model.name, health_path=None,
                                  headers=auth_headers(model))
