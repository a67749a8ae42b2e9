"""SGLang's server (`python -m sglang.launch_server`): its command line from the spec, metric names, memory release.

Every flag emitted here is checked against the flags of the real `launch_server --help`, recorded in
tests/data/sglang_launch_server_flags.txt (tests/engines/test_sglang.py)."""

from __future__ import annotations

import aiohttp
import orjson

from modelyard.engines.accelerator import (
    AcceleratorEngine,
    replica_gpus,
    rope_override,
    weights,
)
from modelyard.engines.base import LaunchPlan, MetricNames, Task, post_control
from modelyard.spec.schema import BaseModelSpec, SGLangModel

# exported with --enable-metrics
METRICS = MetricNames(running=(b"sglang:num_running_reqs",), waiting=(b"sglang:num_queue_reqs",),
                      kv_usage=(b"sglang:token_usage",))


KV_CACHE_DTYPES = {"fp8": "fp8_e4m3"}  # SGLang has no plain fp8: the spec's (vLLM's) fp8 is e4m3


def launch_argv(model: SGLangModel, python: str, weights_arg: str, host: str, port: int) -> list[str]:
    argv = [python, "-m", "sglang.launch_server", "--model-path", weights_arg, "--host", host, "--port", str(port),
            "--served-model-name", model.served_model_name or model.name,
            "--tp-size", str(model.tensor_parallel), "--pp-size", str(model.pipeline_parallel), "--enable-metrics"]
    optional: list[tuple[str, object]] = [
        ("--quantization", model.quantization), ("--kv-cache-dtype", KV_CACHE_DTYPES.get(model.kv_cache_dtype or "",
                                                                                           model.kv_cache_dtype)),
        ("--context-length", model.max_context), ("--random-seed", model.seed),
        ("--mem-fraction-static", model.gpu_memory_utilization), ("--max-running-requests", model.max_num_seqs)]
    for flag, value in optional:
        if value is not None:
            argv += [flag, str(value)]
    if (override := rope_override(model, "rope_scaling")) is not None:
        argv += ["--json-model-override-args", orjson.dumps(override).decode()]
    if model.enable_prefix_caching is False:
        argv.append("--disable-radix-cache")  # SGLang's prefix cache is on unless disabled
    if model.lora:
        argv += ["--enable-lora", "--lora-paths", *(f"{a.name}={a.path}" for a in model.lora)]
    if model.sleep_mode:
        argv.append("--enable-memory-saver")
    return argv


class SGLangEngine(AcceleratorEngine):
    name = "sglang"
    image = "lmsysorg/sglang:v0.5.23"  # the flags were recorded from this version
    command = "python3"  # -m sglang.launch_server
    inherited_env = (*AcceleratorEngine.inherited_env, "SGLANG_", "SGL_")
    metrics = METRICS
    sleep_levels = (1,)

    def launch(self, model: BaseModelSpec, host: str, port: int, replica: int) -> LaunchPlan:
        assert isinstance(model, SGLangModel)
        weights_arg, env = weights(model, check=False)
        argv = launch_argv(model, model.binary or self.command, weights_arg, host, port)
        if self.task(model) is not Task.CHAT:
            argv.append("--is-embedding")  # SGLang serves embeddings and scores from the same mode
        env.update(replica_gpus(model, replica))
        return LaunchPlan(argv=[*argv, *model.extra_args], env={**env, **model.env})

    def answer_body(self, path: str, body: bytes) -> bytes:
        return rerank_answer(body) if path == "/v1/rerank" else body

    async def sleep(self, session: aiohttp.ClientSession, base_url: str, model: BaseModelSpec,
                    level: int = 1) -> str | None:
        return await post_control(session, base_url, "/release_memory_occupation", {})

    async def wake(self, session: aiohttp.ClientSession, base_url: str, model: BaseModelSpec) -> str | None:
        return await post_control(session, base_url, "/resume_memory_occupation", {})



def rerank_answer(body: bytes) -> bytes:
    """SGLang answers /v1/rerank with a bare list of `{index, score, document, meta_info}`; the API (vLLM's, Jina's,
    Cohere's) is `{results: [{index, relevance_score, document: {text}}], usage}`."""
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(items, list):
        return body
    results, tokens = [], 0
    for item in items:
        if not isinstance(item, dict):
            return body
        result: dict[str, object] = {"index": item.get("index"), "relevance_score": item.get("score")}
        if isinstance(item.get("document"), str):
            result["document"] = {"text": item["document"]}
        results.append(result)
        meta = item.get("meta_info")
        if isinstance(meta, dict) and isinstance(meta.get("prompt_tokens"), int):
            tokens += meta["prompt_tokens"]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return orjson.dumps({"object": "rerank", "results": results, "usage": usage})
