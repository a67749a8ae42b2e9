from __future__ import annotations

import random

from modelyard.simulator.profiles import Profile


def prefill_s(profile: Profile, uncached_tokens: int) -> float:
    """The model's TTFT on an idle engine: fixed overhead + the prompt tokens not found in the prefix cache."""
    return profile.prefill_overhead_s + max(0, uncached_tokens) * profile.prefill_s_per_token


def decode_step_s(profile: Profile, running: int) -> float:
    """One decode step (one token for every running sequence): grows linearly with the batch."""
    return profile.itl_base_s + max(0, running - 1) * profile.itl_per_seq_s


def step_s(profile: Profile, decoding: int, prefill_tokens: tuple[int, ...]) -> float:
    """An engine step: decodes `decoding` sequences and prefills the uncached tokens of newly scheduled ones.

    Prefills share the step with the decodes (no chunking), so a prefill delays the whole batch once, as in vLLM
    without chunked prefill; an idle engine's step is exactly the prefill time. Embedding and rerank inputs are
    prefills of this kind (their whole cost: no decode follows).
    """
    duration = decode_step_s(profile, decoding) if decoding else 0.0
    if prefill_tokens:
        duration += profile.prefill_overhead_s + sum(prefill_tokens) * profile.prefill_s_per_token
    return duration


def with_jitter(duration: float, jitter: float, rng: random.Random) -> float:
    if jitter <= 0.0:
        return duration
    return duration * (1.0 + rng.uniform(-jitter, jitter))


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-max(0, tokens) // block_size)


def max_cacheable_blocks(prompt_tokens: int, block_size: int) -> int:
    """Full prompt blocks that a cache hit may cover: the last prompt token is always computed (as vLLM does)."""
    return max(0, prompt_tokens - 1) // block_size
