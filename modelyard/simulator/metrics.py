from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# vLLM's metric names (vllm/v1/metrics/loggers.py); counters are exposed with the _total suffix, as
# prometheus_client does for vLLM
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
PREFIX_QUERIES = "vllm:prefix_cache_queries"
PREFIX_HITS = "vllm:prefix_cache_hits"
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
REQUEST_SUCCESS = "vllm:request_success"
TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"
TPOT = "vllm:request_time_per_output_token_seconds"
E2E = "vllm:e2e_request_latency_seconds"
QUEUE_TIME = "vllm:request_queue_time_seconds"
CACHE_CONFIG = "vllm:cache_config_info"
# the simulator's own (vLLM has no such counters): the prompt tokens it prefilled itself (not found in its prefix
# cache, not received from a prefill replica), and the KV caches it handed to decode replicas or received from
# prefill replicas (prefill/decode disaggregation, simulator/disagg.py)
COMPUTED_PROMPT_TOKENS = "modelyard_simulator:computed_prompt_tokens"
KV_SENT = "modelyard_simulator:kv_transfers_sent"
KV_RECEIVED = "modelyard_simulator:kv_transfers_received"
KV_RECEIVED_BLOCKS = "modelyard_simulator:kv_blocks_received"

# vLLM's buckets for these histograms
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)


class Histogram:
    """A cumulative-on-render Prometheus histogram: observing is one bisect and two adds."""

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name, self.help_text, self.buckets = name, help_text, tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def render(self, labels: str, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.help_text}\n# TYPE {self.name} histogram\n")
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            out.append(f'{self.name}_bucket{{le="{bound}",{labels}}} {running}.0\n')
        out.append(f'{self.name}_bucket{{le="+Inf",{labels}}} {running + self.counts[-1]}.0\n')
        out.append(f"{self.name}_count{{{labels}}} {running + self.counts[-1]}.0\n")
        out.append(f"{self.name}_sum{{{labels}}} {self.sum!r}\n")


class EngineMetrics:
    """Counters and histograms of one simulated engine; gauges are read from the scheduler when rendering."""

    def __init__(self, model_name: str, kv_blocks: int | None = None, block_size: int = 16) -> None:
        escaped = model_name.replace("\\", "\\\\").replace('"', '\\"')
        self.labels = f'engine="0",model_name="{escaped}"'
        # vLLM's info gauge of the cache config: routers read the KV cache size from its labels
        self.cache_info = "" if kv_blocks is None else (
            f"# HELP {CACHE_CONFIG} Information of the LLMEngine CacheConfig\n# TYPE {CACHE_CONFIG} gauge\n"
            f'{CACHE_CONFIG}{{block_size="{block_size}",cache_dtype="auto",enable_prefix_caching="True",engine="0",'
            f'num_cpu_blocks="None",num_gpu_blocks="{kv_blocks}"}} 1.0\n')
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.computed_prompt_tokens = 0
        self.kv_sent = 0
        self.kv_received = 0
        self.kv_received_blocks = 0
        self.success: dict[str, int] = {}
        self.ttft = Histogram(TTFT, "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.itl = Histogram(ITL, "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.tpot = Histogram(TPOT, "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.e2e = Histogram(E2E, "Histogram of e2e request latency in seconds.", REQUEST_BUCKETS)
        self.queue = Histogram(QUEUE_TIME, "Histogram of time spent in WAITING phase for request.", REQUEST_BUCKETS)

    def finished(self, reason: str) -> None:
        self.success[reason] = self.success.get(reason, 0) + 1

    def render(self, running: int, waiting: int, kv_usage: float) -> bytes:
        labels = self.labels
        out: list[str] = []
        gauges = ((RUNNING, "Number of requests in model execution batches.", running),
                  (WAITING, "Number of requests waiting to be processed.", waiting),
                  (KV_USAGE, "KV-cache usage. 1 means 100 percent usage.", kv_usage))
        for name, help_text, value in gauges:
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{name}{{{labels}}} {float(value)!r}\n")
        out.append(self.cache_info)
        counters = ((PREFIX_QUERIES, "Prefix cache queries, in terms of number of queried tokens.",
                     self.prefix_queries),
                    (PREFIX_HITS, "Prefix cache hits, in terms of number of cached tokens.", self.prefix_hits),
                    (PROMPT_TOKENS, "Number of prefill tokens processed.", self.prompt_tokens),
                    (GENERATION_TOKENS, "Number of generation tokens processed.", self.generation_tokens),
                    (COMPUTED_PROMPT_TOKENS, "Prompt tokens prefilled by this engine.", self.computed_prompt_tokens),
                    (KV_SENT, "Prefilled KV caches handed to a decode replica.", self.kv_sent),
                    (KV_RECEIVED, "Requests decoded from a prefill replica's KV cache.", self.kv_received),
                    (KV_RECEIVED_BLOCKS, "KV blocks received from prefill replicas.", self.kv_received_blocks))
        for name, help_text, count in counters:
            out.append(f"# HELP {name}_total {help_text}\n# TYPE {name}_total counter\n"
                       f"{name}_total{{{labels}}} {float(count)!r}\n")
        out.append(f"# HELP {REQUEST_SUCCESS}_total Count of successfully processed requests.\n"
                   f"# TYPE {REQUEST_SUCCESS}_total counter\n")
        for reason in ("stop", "length", "abort"):
            out.append(f'{REQUEST_SUCCESS}_total{{{labels},finished_reason="{reason}"}} '
                       f"{float(self.success.get(reason, 0))!r}\n")
        for histogram in (self.ttft, self.itl, self.tpot, self.e2e, self.queue):
            histogram.render(labels, out)
        return "".join(out).encode()
