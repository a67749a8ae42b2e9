from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

FAILURE_KINDS = ("500", "429", "503", "drop", "hang", "crash")
# what the simulated model serves: chat (/v1/chat/completions, /v1/completions), embedding (/v1/embeddings and
# /rerank, as vLLM serves an embedding model) or rerank (/rerank only, as a cross-encoder)
TASKS = ("chat", "embedding", "rerank")


@dataclass(frozen=True)
class Profile:
    """Every number of the simulator's latency and capacity model; `source` says where the numbers come from."""

    name: str
    source: str
    # prefill: TTFT = prefill_overhead_s + uncached prompt tokens x prefill_s_per_token (when the engine is idle)
    prefill_overhead_s: float
    prefill_s_per_token: float
    # decode: one engine step advances every running sequence by one token; its duration grows with the batch
    itl_base_s: float
    itl_per_seq_s: float
    max_num_seqs: int
    # KV cache in blocks of block_size tokens; prefix caching keeps freed blocks until evicted (LRU)
    kv_blocks: int
    block_size: int = 16
    max_model_len: int = 8192
    default_max_tokens: int = 64
    # process life: weights loading before the port opens, waking from /sleep (level 1 keeps weights in CPU RAM)
    startup_s: float = 0.0
    wake_level1_s: float = 0.0
    wake_level2_s: float = 0.0
    # noise and faults: step durations x (1 +- jitter); a failure_rate share of requests fail with one of the kinds
    jitter: float = 0.0
    failure_rate: float = 0.0
    failure_kinds: str = "500,429,drop"
    seed: int = 0
    # the seed of the prefix cache's block hash chain (vLLM's PYTHONHASHSEED with sha256_cbor): a router that knows
    # it computes the keys of the KV events
    hash_seed: str = "0"
    # prefill/decode disaggregation (simulator/disagg.py): a decode replica's wait per KV block it fetches from a
    # prefill replica
    kv_transfer_s_per_block: float = 0.0
    # the model's task, and its embedding vectors' length (embedding task; `dimensions` may ask for fewer)
    task: str = "chat"
    embedding_dim: int = 384

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                problems.append(f"{f.name} must be >= 0")
        if (self.max_num_seqs < 1 or self.kv_blocks < 1 or self.block_size < 1 or self.max_model_len < 1
                or self.embedding_dim < 1):
            problems.append("max_num_seqs, kv_blocks, block_size, max_model_len and embedding_dim must be >= 1")
        if self.task not in TASKS:
            problems.append(f"unknown task {self.task!r} (known: {', '.join(TASKS)})")
        if not 0.0 <= self.failure_rate <= 1.0:
            problems.append("failure_rate must be within [0, 1]")
        if self.jitter >= 1.0:
            problems.append("jitter must be < 1")
        unknown = [k for k in self.kinds() if k not in FAILURE_KINDS]
        if unknown:
            problems.append(f"unknown failure kinds {unknown} (known: {', '.join(FAILURE_KINDS)})")
        if problems:
            raise ValueError(f"profile {self.name!r}: " + "; ".join(problems))

    def kinds(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.failure_kinds.split(",") if k.strip())


_LLAMA_8B_H100_SOURCE = (
    "Llama-3.1-8B-Instruct BF16 on one H100 SXM 80GB under vLLM. "
    "ITL: decode is memory-bound, 16 GB of weights / 3.35 TB/s = 4.8 ms per step floor, ~6.5 ms measured at "
    "concurrency 1 (cf. 13 ms at C=1 on A100-40GB, johnmusgrave.com/p/vllm-throughput-latency-sweep-on); "
    "~12,500 output tok/s aggregate on 1xH100 (morphllm.com/vllm-benchmarks) gives ~20 ms per step at 256 "
    "sequences, hence +0.053 ms per running sequence. Prefill: 2 x 8e9 FLOP/token at ~50% of 989 dense BF16 "
    "TFLOPS = ~32 us/token, plus ~15 ms scheduling/step overhead. KV: 2 x 32 layers x 8 KV heads x 128 x 2 B = "
    "128 KiB/token; (0.9 x 80 GB - 16 GB weights - ~4 GB activations) / 128 KiB = ~400k tokens = 25,000 blocks "
    "of 16. max_num_seqs 256: vLLM's EngineArgs default. Startup ~30 s (weights from NVMe + torch.compile + CUDA "
    "graphs, typical vLLM startup log); wake-up from sleep level 1 ~0.5 s, level 2 ~5 s (vLLM sleep-mode docs: "
    "level 1 offloads weights to CPU RAM, level 2 discards them). KV transfer between a prefill and a decode "
    "replica: a block of 16 tokens is 2 MiB; at ~50 GB/s (RDMA or NVLink through NIXL) ~40 us per block."
)

_TINY_CPU_SOURCE = (
    "Not a real model: small, fast numbers for tests and CPU benchmarks (a 20 ms inter-token latency like a "
    "loaded GPU engine, a 5 ms prefill overhead, 0.1 ms per prompt token, a 2,048-block cache)."
)

PROFILES: Mapping[str, Profile] = MappingProxyType({
    "tiny-cpu": Profile(
        name="tiny-cpu", source=_TINY_CPU_SOURCE,
        prefill_overhead_s=0.005, prefill_s_per_token=0.0001, itl_base_s=0.02, itl_per_seq_s=0.0,
        max_num_seqs=64, kv_blocks=2048, max_model_len=4096, default_max_tokens=16,
    ),
    "llama-3.1-8b-h100": Profile(
        name="llama-3.1-8b-h100", source=_LLAMA_8B_H100_SOURCE,
        prefill_overhead_s=0.015, prefill_s_per_token=0.000032, itl_base_s=0.0065, itl_per_seq_s=0.000053,
        max_num_seqs=256, kv_blocks=25_000, max_model_len=131_072, default_max_tokens=256,
        startup_s=30.0, wake_level1_s=0.5, wake_level2_s=5.0, jitter=0.05, kv_transfer_s_per_block=0.00004,
    ),
})

_NOT_OVERRIDABLE = ("name", "source")


def override_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Profile) if f.name not in _NOT_OVERRIDABLE)


def resolve_profile(name: str, overrides: Mapping[str, object] | None = None) -> Profile:
    """A named profile with some of its numbers replaced; values may be strings (from the command line)."""
    try:
        base = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown simulator profile {name!r} (known: {', '.join(PROFILES)})") from None
    if not overrides:
        return base
    types = {f.name: f.type for f in dataclasses.fields(Profile)}
    changes: dict[str, object] = {}
    for key, value in overrides.items():
        if key not in types or key in _NOT_OVERRIDABLE:
            raise ValueError(f"unknown simulator parameter {key!r} (known: {', '.join(override_names())})")
        changes[key] = _coerce(key, str(types[key]), value)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _coerce(key: str, type_name: str, value: object) -> object:
    try:
        if type_name == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not an integer")
            return int(value)  # type: ignore[call-overload]
        if type_name == "float":
            return float(value)  # type: ignore[arg-type]
        return value if isinstance(value, str) else ",".join(map(str, value)) if isinstance(value, list) else str(value)
    except (TypeError, ValueError):
        raise ValueError(f"simulator parameter {key!r}: {value!r} is not a {type_name}") from None
