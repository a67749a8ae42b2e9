"""vLLM's OpenAI-compatible server (`vllm serve`): its metric names and its sleep mode."""

from __future__ import annotations

import aiohttp

from modelyard.engines.base import MetricNames

METRICS = MetricNames(
    running=(b"vllm:num_requests_running",), waiting=(b"vllm:num_requests_waiting",),
    kv_usage=(b"vllm:kv_cache_usage_perc", b"vllm:gpu_cache_usage_perc"),  # the second: vLLM before 0.10
    cache_info=b"vllm:cache_config_info",
    prefix_hits=(b"vllm:prefix_cache_hits_total",), prefix_queries=(b"vllm:prefix_cache_queries_total",),
)


async def post_sleep(session: aiohttp.ClientSession, base_url: str, path: str) -> str | None:
    """vLLM's dev-mode /sleep?level=N and /wake_up (served on the replica's loopback port only, never through the
    gateway); None when the engine did it."""
    try:
        async with session.post(base_url + path, timeout=aiohttp.ClientTimeout(total=120)) as resp:
            if resp.status == 200:
                return None
            return f"POST {path} answered {resp.status}: {(await resp.text())[:200]}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return f"POST {path} failed: {type(exc).__name__}"
