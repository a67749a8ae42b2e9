from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import orjson

from modelyard.spec.schema import BaseModelSpec


class EngineError(Exception):
    """An engine cannot be launched as configured (missing binary, missing model file, ...)."""


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


class EngineAdapter(Protocol):
    name: str

    def prepare(self, model: BaseModelSpec) -> None:
        """Checks everything the launch needs (binary, weights); raises EngineError with a clear message."""

    def launch(self, model: BaseModelSpec, host: str, port: int, replica: int) -> LaunchPlan | None:
        """The command that runs one replica, or None for a server modelyard does not launch."""

    def external_url(self, model: BaseModelSpec, replica: int) -> str | None:
        """The base URL of a replica that runs elsewhere (engine `openai`)."""

    async def probe(self, session: aiohttp.ClientSession, base_url: str, model: BaseModelSpec) -> str | None:
        """None when the replica is healthy and generates; otherwise why not."""


async def probe_openai(session: aiohttp.ClientSession, base_url: str, model_name: str,
                       health_path: str | None = "/health", timeout_s: float = 30.0,
                       headers: dict[str, str] | None = None) -> str | None:
    """Health endpoint answers 200, then a 1-token completion succeeds."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        if health_path:
            async with session.get(base_url + health_path, timeout=timeout, headers=headers) as resp:
                if resp.status != 200:
                    return f"{health_path} answered {resp.status}"
        body = orjson.dumps({"model": model_name, "prompt": "Hi", "max_tokens": 1, "temperature": 0})
        async with session.post(base_url + "/v1/completions", data=body, timeout=timeout,
                                headers={"Content-Type": "application/json", **(headers or {})}) as resp:
            if resp.status != 200:
                text = (await resp.text())[:200]
                return f"1-token completion answered {resp.status}: {text}"
            payload = orjson.loads(await resp.read())
            if not payload.get("choices"):
                return "1-token completion returned no choices"
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None
