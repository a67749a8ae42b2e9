"""The engine seam: everything modelyard knows about one kind of model server lives in its adapter.

An adapter says what the engine serves (`tasks`, and per model `task` and `endpoints`), how many requests a replica
takes at once (`slots`), how to launch a replica (`launch`, after `prepare` checked binary and weights) or where an
external one runs (`external_url`), what every request to it carries (`headers`, `upstream_model`), how to tell
that it works (`probe`: a real 1-token generation, embedding or rerank through an endpoint the model serves;
`health`: the cheap liveness check of a ready replica), which of its metrics mean what (`metrics`), and whether and
how it sleeps and wakes. The gateway, routing and fleet ask the adapter; nothing outside `engines/` tests an
engine's type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import orjson

from modelyard.spec.schema import BaseModelSpec

PROBE_TIMEOUT_S = 30.0
ABSENT = frozenset({404, 405, 501})  # an endpoint the server does not have


class EngineError(Exception):
    """An engine cannot be launched as configured (missing binary, missing model file, ...)."""


class Task(StrEnum):
    CHAT = "chat"
    EMBEDDING = "embedding"
    RERANK = "rerank"


# the gateway's paths that each task serves (the gateway maps its rerank aliases onto /v1/rerank)
ENDPOINTS: Mapping[Task, frozenset[str]] = {
    Task.CHAT: frozenset({"/v1/chat/completions", "/v1/completions"}),
    Task.EMBEDDING: frozenset({"/v1/embeddings"}),
    Task.RERANK: frozenset({"/v1/rerank"}),
}


@dataclass(frozen=True)
class MetricNames:
    """Which Prometheus names of the engine's /metrics mean what; the first name found of each tuple is read.

    A KV usage above 1 is read as a percentage. `cache_info` is a gauge whose labels `num_gpu_blocks` and
    `block_size` give the KV cache's size (vLLM's `cache_config_info`)."""

    running: tuple[bytes, ...] = ()
    waiting: tuple[bytes, ...] = ()
    kv_usage: tuple[bytes, ...] = ()
    cache_info: bytes | None = None
    prefix_hits: tuple[bytes, ...] = ()
    prefix_queries: tuple[bytes, ...] = ()


NO_METRICS = MetricNames()


@dataclass(frozen=True)
class Resources:
    """What one replica takes of the machine (`resources:` in yard.yaml bounds the sum)."""

    cpus: float = 0.0
    memory_gib: float = 0.0
    gpus: int = 0


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    mounts: tuple[str, ...] = ()  # `container_launch`: the weight paths its container mounts read-only


@dataclass(frozen=True)
class KVEvents:
    """Where one replica publishes its KV cache events (vLLM's ZMQ PUB, and the ROUTER that replays missed batches)
    and how it keys its blocks (modelyard/kv_hash.py: vLLM's sha256_cbor chain from this seed), so that a router
    computes the same keys from the prompt's token ids."""

    endpoint: str
    replay: str | None = None
    topic: str = ""
    hash_seed: str = "0"


class EngineAdapter:
    """The defaults that suit an OpenAI-compatible engine; each engine's file overrides what differs."""

    name: ClassVar[str]
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.CHAT})
    metrics: ClassVar[MetricNames] = NO_METRICS
    health_path: ClassVar[str | None] = "/health"
    default_slots: ClassVar[int] = 64
    sleep_levels: ClassVar[tuple[int, ...]] = ()  # empty: the engine cannot sleep
    runs_here: ClassVar[bool] = True  # modelyard launches its replicas (False: a server that runs elsewhere)
    image: ClassVar[str | None] = None  # its server's container image (None: modelyard's own, which runs it)
    probe_tool: ClassVar[str] = "python3"  # what that image has to run an exec probe with: python3 or curl
    # the gateway paths whose requests the engine salts its prefix cache by (`cache_salt` in the body): the gateway
    # sets one per key there (gateway/auth.cache_salt), so a tenant cannot time another's cached prompts
    cache_salt_paths: ClassVar[frozenset[str]] = frozenset()
    # what a replica takes from modelyard's environment besides the basics (fleet/child_env.py): names, or prefixes
    # ending in "_"; nothing else of it, a secret least of all, reaches the engine
    inherited_env: ClassVar[tuple[str, ...]] = ()
    # POST path that answers a prompt's token ids as vLLM's /tokenize does (None: the engine has none)
    tokenize_path: ClassVar[str | None] = None
    # its replicas can play prefill and decode roles (`roles:`, spec/roles.py): a prefill replica answers a request
    # whose `kv_transfer_params` say do_remote_decode with the params a decode replica fetches its KV cache by
    # (vLLM's NIXL connector protocol, gateway/disagg.py)
    can_disaggregate: ClassVar[bool] = False

    def task(self, model: BaseModelSpec) -> Task:
        return Task(model.task) if model.task else Task.CHAT

    def endpoints(self, model: BaseModelSpec) -> frozenset[str]:
        return ENDPOINTS[self.task(model)]

    def slots(self, model: BaseModelSpec) -> int:
        """Requests one replica works on at once (the gateway admits ready replicas x slots)."""
        return self.default_slots

    def resources(self, model: BaseModelSpec) -> Resources:
        """One replica's share of the machine: by default its declared memory only."""
        return Resources(memory_gib=model.memory_gib or 0.0)

    def prepare(self, model: BaseModelSpec) -> None:
        """Checks everything the launch needs (binary, weights); raises EngineError with a clear message."""

    def launch(self, model: BaseModelSpec, host: str, port: int, replica: int) -> LaunchPlan | None:
        """The command that runs one replica, or None for a server modelyard does not launch."""
        return None

    def publishes_kv_events(self, model: BaseModelSpec) -> bool:
        """Whether this model's replicas publish KV events (its default routing profile is then `precise`)."""
        return False

    def kv_events(self, model: BaseModelSpec, host: str, replica: int) -> KVEvents | None:
        """Where a replica about to start will publish its KV events (fresh addresses on `host`; for a server that
        runs elsewhere, where it does), or None when the engine publishes none, or this model has them off."""
        return None

    def kv_events_at(self, model: BaseModelSpec, host: str, port: int, replay_port: int) -> KVEvents | None:
        """Where a replica in a pod publishes its KV events, on TCP at these fixed ports (`modelyard render
        kubernetes` names them on the container): with `host` "*", the addresses the engine binds on its pod's
        network; with the pod's IP, those a subscriber connects to (gateway/discovery.py). None: it publishes none."""
        return None

    def disaggregates(self, model: BaseModelSpec) -> bool:
        """Whether this model's replicas can play prefill and decode roles."""
        return self.can_disaggregate

    def tokenizer(self, model: BaseModelSpec) -> str | None:
        """The POST path that tokenizes a prompt for this model as vLLM's /tokenize does, or None."""
        return self.tokenize_path

    def tokenizer_dir(self, model: BaseModelSpec) -> Path | None:
        """The directory of the tokenizer.json that the gateway loads for this model (`tokenizer: local`), or None."""
        if model.tokenizer != "local" or model.tokenizer_path is None:
            return None
        return Path(model.tokenizer_path).expanduser()

    def prompt_counter(self, model: BaseModelSpec) -> tuple[str, str | None] | None:
        """How a replica counts a prompt's tokens: (its vLLM-shaped /tokenize, None), or for an engine whose tokenize
        takes text (llama.cpp), (that path, the path that applies its chat template); None: it cannot."""
        path = self.tokenizer(model)
        return (path, None) if path else None

    def with_kv_events(self, model: BaseModelSpec, plan: LaunchPlan, events: KVEvents) -> LaunchPlan:
        """The launch plan that makes the replica publish its KV events as `events` says."""
        return plan

    def container_launch(self, model: BaseModelSpec, host: str, port: int) -> LaunchPlan | None:
        """The launch plan in a container of the engine's image (`modelyard render kubernetes`), with the weight
        paths it mounts: by default the same as `launch`; an engine whose launch reads this machine (a binary, a
        weights file, this interpreter) says here what its container runs instead."""
        return self.launch(model, host, port, replica=0)

    def external_url(self, model: BaseModelSpec, replica: int) -> str | None:
        """The base URL of a replica that runs elsewhere (engine `openai`)."""
        return None

    def headers(self, model: BaseModelSpec) -> dict[str, str]:
        """Headers every request to this model's replicas carries (an external server's key)."""
        return {}

    def upstream_model(self, model: BaseModelSpec) -> str | None:
        """The model name the engine knows, when it is not the spec's name."""
        return None

    def secret_env(self, model: BaseModelSpec) -> tuple[str, ...]:
        """Environment variables holding this model's secrets (kept out of the gateway workers' environment)."""
        return ()

    def answer_status(self, status: int, body: bytes) -> int:
        """The status the client gets for the engine's error answer `body` (an engine that answers 500 for a
        request it cannot take says so here; the gateway never retries or counts such an answer)."""
        return status

    def answer_body(self, path: str, body: bytes) -> bytes:
        """An unstreamed 200 answer as the gateway's API gives it (an engine whose shape differs converts it)."""
        return body

    async def probe(self, session: aiohttp.ClientSession, base_url: str, model: BaseModelSpec) -> str | None:
        """None when the replica is healthy and does its task for real; otherwise why not."""
        return await probe_task(session, base_url, self.upstream_model(model) or model.name, self.task(model),
                                self.health_path, self.headers(model), convert=self.answer_body)

    async def health(self, session: aiohttp.ClientSession, base_url: str, model: BaseModelSpec) -> str | None:
        """The cheap check of a ready replica, every few seconds; None when it answers."""
        if self.health_path is None:
            return None
        try:
            async with session.get(base_url + self.health_path, headers=self.headers(model),
                                   timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return None if resp.status == 200 else f"{self.health_path} answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{self.health_path} failed: {type(exc).__name__}"

    def can_sleep(self, model: BaseModelSpec) -> bool:
        return bool(self.sleep_levels)

    async def sleep(self, session: aiohttp.ClientSession, base_url: str, model: BaseModelSpec,
                    level: int = 1) -> str | None:
        """Puts the replica to sleep (frees its accelerator memory); None when done, else why not."""
        return f"engine {self.name} cannot sleep"

    async def wake(self, session: aiohttp.ClientSession, base_url: str, model: BaseModelSpec) -> str | None:
        return f"engine {self.name} cannot sleep"


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


PROBES: Mapping[Task, tuple[tuple[str, str, dict[str, Any]], ...]] = {
    # (what, path, body without the model): tried in order, the next only when the server lacks the path
    Task.CHAT: (("1-token completion", "/v1/completions", {"prompt": "Hi", "max_tokens": 1, "temperature": 0}),
                ("1-token chat completion", "/v1/chat/completions",
                 {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0})),
    Task.EMBEDDING: (("one-input embedding", "/v1/embeddings", {"input": "Hi"}),),
    Task.RERANK: (("one-document rerank", "/v1/rerank", {"query": "Hi", "documents": ["Hello"]}),),
}


def _answered(task: Task, payload: Any) -> bool:
    if not isinstance(payload, dict):
        return False
    if task is Task.CHAT:
        return bool(payload.get("choices"))
    if task is Task.EMBEDDING:
        data = payload.get("data")
        return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and bool(data[0].get("embedding"))
    return bool(payload.get("results"))


async def probe_task(session: aiohttp.ClientSession, base_url: str, model_name: str, task: Task,
                     health_path: str | None = "/health", headers: dict[str, str] | None = None,
                     timeout_s: float = PROBE_TIMEOUT_S,
                     convert: Callable[[str, bytes], bytes] | None = None) -> str | None:
    """The health endpoint answers 200 (when there is one), then the model does its task once for real."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        if health_path:
            async with session.get(base_url + health_path, timeout=timeout, headers=headers) as resp:
                if resp.status != 200:
                    return f"{health_path} answered {resp.status}"
        problem = "no probe"
        for what, path, body in PROBES[task]:
            data = orjson.dumps({"model": model_name, **body})
            async with session.post(base_url + path, data=data, timeout=timeout,
                                    headers={"Content-Type": "application/json", **(headers or {})}) as resp:
                text = await resp.read()
                if resp.status == 200:
                    answer = orjson.loads(convert(path, text) if convert else text)
                    return None if _answered(task, answer) else f"{what} ({path}) answered without a result"
                problem = f"{what} ({path}) answered {resp.status}: {text[:200].decode(errors='replace')}"
                if resp.status not in ABSENT:
                    return problem
        return problem
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return _why(exc)


async def post_control(session: aiohttp.ClientSession, base_url: str, path: str,
                       body: dict[str, Any] | None = None) -> str | None:
    """A control call on a replica's own loopback port (sleep, wake; never reachable through the gateway); None
    when the engine did it, else why not."""
    try:
        async with session.post(base_url + path, json=body, timeout=aiohttp.ClientTimeout(total=120)) as resp:
            return None if resp.status == 200 else f"POST {path} answered {resp.status}: {(await resp.text())[:200]}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return f"POST {path} failed: {type(exc).__name__}"
