"""vLLM's OpenAI-compatible server (`vllm serve`): its command line from the spec, its metric names, its sleep mode.

Every flag emitted here is checked against the flags of the real `vllm serve --help`, recorded in
tests/data/vllm_serve_flags.txt (tests/engines/test_vllm.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import aiohttp
import orjson

from modelyard.engines.accelerator import (
    AcceleratorEngine,
    replica_gpus,
    rope_override,
    weights,
)
from modelyard.engines.base import EngineAdapter, KVEvents, LaunchPlan, MetricNames, Task, post_control
from modelyard.spec.schema import BaseModelSpec, VLLMModel

METRICS = MetricNames(
    running=(b"vllm:num_requests_running",), waiting=(b"vllm:num_requests_waiting",),
    kv_usage=(b"vllm:kv_cache_usage_perc", b"vllm:gpu_cache_usage_perc"),  # the second: vLLM before 0.10
    cache_info=b"vllm:cache_config_info",
    prefix_hits=(b"vllm:prefix_cache_hits_total",), prefix_queries=(b"vllm:prefix_cache_queries_total",),
)


# prefill/decode disaggregation with the NIXL connector, as vLLM's nixl_connector_usage.md starts both a prefiller
# and a decoder: each replica can send and receive KV caches ("kv_both"); which leg a replica serves is the gateway's
# choice (its role, spec/roles.py), not a flag of its own
KV_TRANSFER_CONFIG = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}


def nixl_side_channel(host: str) -> dict[str, str]:
    """The NIXL handshake's address of one replica: its own port on its host (vLLM's default, 5600, would collide
    between the replicas of one machine); a decoder reaches it through `kv_transfer_params.remote_host/port`."""
    from modelyard.fleet.process import free_port

    return {"VLLM_NIXL_SIDE_CHANNEL_HOST": host, "VLLM_NIXL_SIDE_CHANNEL_PORT": str(free_port(host))}


# how vLLM is told to pool instead of generate (a model's own head decides embedding or scoring)
RUNNER = {Task.CHAT: (), Task.EMBEDDING: ("--runner", "pooling"), Task.RERANK: ("--runner", "pooling")}


def serve_argv(model: VLLMModel, binary: str, weights_arg: str, host: str, port: int) -> list[str]:
    argv = [binary, "serve", weights_arg, "--host", host, "--port", str(port),
            "--served-model-name", model.served_model_name or model.name,
            "--tensor-parallel-size", str(model.tensor_parallel),
            "--pipeline-parallel-size", str(model.pipeline_parallel)]
    optional: list[tuple[str, object]] = [
        ("--quantization", model.quantization), ("--kv-cache-dtype", model.kv_cache_dtype),
        ("--max-model-len", model.max_context), ("--seed", model.seed),
        ("--gpu-memory-utilization", model.gpu_memory_utilization), ("--max-num-seqs", model.max_num_seqs)]
    for flag, value in optional:
        if value is not None:
            argv += [flag, str(value)]
    if (override := rope_override(model, "rope_parameters")) is not None:
        argv += ["--hf-overrides", orjson.dumps(override).decode()]
    if model.enable_prefix_caching is not None:
        argv.append("--enable-prefix-caching" if model.enable_prefix_caching else "--disable-prefix-caching")
    if model.lora:
        argv += ["--enable-lora", "--lora-modules", *(f"{a.name}={a.path}" for a in model.lora)]
    if model.sleep_mode:
        argv.append("--enable-sleep-mode")
    return argv


class VLLMSleep(EngineAdapter):
    """vLLM's sleep mode: level 1 keeps the weights in host memory, level 2 drops them."""

    sleep_levels = (1, 2)

    async def sleep(self, session: aiohttp.ClientSession, base_url: str, model: BaseModelSpec,
                    level: int = 1) -> str | None:
        return await post_control(session, base_url, f"/sleep?level={level}")

    async def wake(self, session: aiohttp.ClientSession, base_url: str, model: BaseModelSpec) -> str | None:
        return await post_control(session, base_url, "/wake_up")


class VLLMEngine(VLLMSleep, AcceleratorEngine):
    name = "vllm"
    image = "vllm/vllm-openai:v0.33.0"  # the flags were recorded from this version
    command = "vllm"
    metrics = METRICS
    tokenize_path = "/tokenize"
    default_slots = 256  # vLLM's default --max-num-seqs on most GPUs (1024 on H100/H200-class ones)
    inherited_env = (*AcceleratorEngine.inherited_env, "VLLM_")
    cache_salt_paths = frozenset({"/v1/chat/completions", "/v1/completions"})  # vLLM >= 0.9: `cache_salt`
    can_disaggregate = True  # the NIXL connector (nixl_connector_usage.md), `kv_transfer_config` below

    def launch(self, model: BaseModelSpec, host: str, port: int, replica: int) -> LaunchPlan:
        assert isinstance(model, VLLMModel)
        weights_arg, env = weights(model, check=False)
        argv = serve_argv(model, model.binary or self.command, weights_arg, host, port)
        argv += [*RUNNER[self.task(model)], *model.extra_args]
        env.update(replica_gpus(model, replica))
        if model.sleep_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # /sleep and /wake_up; on the replica's loopback port only
        if model.roles is not None:
            argv += ["--kv-transfer-config", orjson.dumps(KV_TRANSFER_CONFIG).decode()]
            env.update(nixl_side_channel(host))
        return LaunchPlan(argv=argv, env={**env, **model.env})

    def publishes_kv_events(self, model: BaseModelSpec) -> bool:
        assert isinstance(model, VLLMModel)
        return model.kv_events

    def kv_events(self, model: BaseModelSpec, host: str, replica: int) -> KVEvents | None:
        """ipc:// sockets in a folder of this user's only: vLLM binds an address with `*` on every interface, and
        the events carry the prompts' token ids."""
        assert isinstance(model, VLLMModel)
        if not model.kv_events:
            return None
        folder = Path(tempfile.gettempdir()) / f"modelyard-kv-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        stem = folder / f"{model.name.replace('/', '_')}-{replica}-{os.urandom(4).hex()}"
        return KVEvents(endpoint=f"ipc://{stem}.pub", replay=f"ipc://{stem}.replay", hash_seed=model.kv_hash_seed)

    def kv_events_at(self, model: BaseModelSpec, host: str, port: int, replay_port: int) -> KVEvents | None:
        """vLLM binds an address with `*` (on IPv4: its publisher sets no ZMQ_IPV6) and connects to any other."""
        assert isinstance(model, VLLMModel)
        if not model.kv_events:
            return None
        return KVEvents(endpoint=f"tcp://{host}:{port}", replay=f"tcp://{host}:{replay_port}",
                        hash_seed=model.kv_hash_seed)

    def with_kv_events(self, model: BaseModelSpec, plan: LaunchPlan, events: KVEvents) -> LaunchPlan:
        config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": events.endpoint,
                  "replay_endpoint": events.replay, "topic": events.topic}
        argv = [*plan.argv, "--kv-events-config", orjson.dumps(config).decode(),
                "--prefix-caching-hash-algo", "sha256_cbor"]
        env = {**plan.env, "PYTHONHASHSEED": events.hash_seed, "VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES": "1"}
        return LaunchPlan(argv=argv, env=env, mounts=plan.mounts)
