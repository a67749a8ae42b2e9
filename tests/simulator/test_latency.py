from __future__ import annotations

import random

from modelyard.simulator.latency import (
    blocks_for,
    decode_step_s,
    max_cacheable_blocks,
    prefill_s,
    step_s,
    with_jitter,
)
from modelyard.simulator.profiles import resolve_profile

PROFILE = resolve_profile("tiny-cpu", {"prefill_overhead_s": 0.01, "prefill_s_per_token": 0.001,
                                       "itl_base_s": 0.02, "itl_per_seq_s": 0.001})


def test_prefill_grows_with_uncached_tokens_only() -> None:
    assert prefill_s(PROFILE, 0) == 0.01
    assert prefill_s(PROFILE, 100) == 0.01 + 100 * 0.001


def test_decode_step_grows_with_batch() -> None:
    assert decode_step_s(PROFILE, 1) == 0.02
    assert decode_step_s(PROFILE, 11) == 0.02 + 10 * 0.001
    assert decode_step_s(PROFILE, 11) > decode_step_s(PROFILE, 2)


def test_step_adds_prefills_to_the_batch_decode() -> None:
    assert step_s(PROFILE, 0, ()) == 0.0
    assert step_s(PROFILE, 0, (50,)) == prefill_s(PROFILE, 50)
    assert step_s(PROFILE, 3, ()) == decode_step_s(PROFILE, 3)
    assert step_s(PROFILE, 3, (10, 20)) == decode_step_s(PROFILE, 3) + prefill_s(PROFILE, 30)


def test_jitter_stays_within_its_bounds() -> None:
    rng = random.Random(1)
    values = [with_jitter(1.0, 0.1, rng) for _ in range(200)]
    assert all(0.9 <= v <= 1.1 for v in values)
    assert len(set(values)) > 1
    assert with_jitter(1.0, 0.0, rng) == 1.0


def test_blocks() -> None:
    assert blocks_for(0, 16) == 0
    assert blocks_for(16, 16) == 1
    assert blocks_for(17, 16) == 2
    # the last prompt token is always computed
    assert max_cacheable_blocks(32, 16) == 1
    assert max_cacheable_blocks(33, 16) == 2
