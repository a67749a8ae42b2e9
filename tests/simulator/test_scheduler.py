from __future__ import annotations

import asyncio

from modelyard.simulator.metrics import EngineMetrics
from modelyard.simulator.profiles import resolve_profile
from modelyard.simulator.scheduler import Scheduler, SeqState, Sequence
from tests.simulator.conftest import FAST


def pooled(tokens: int) -> Sequence:
    return Sequence(prompt_tokens=list(range(1000, 1000 + tokens)), max_tokens=0, stop_reason="stop", arrival=0.0,
                    pooling=True)


def test_a_pooling_sequence_is_one_prefill_step_without_tokens() -> None:
    async def run() -> tuple[Scheduler, list[Sequence], Sequence]:
        profile = resolve_profile("tiny-cpu", FAST)
        scheduler = Scheduler(profile, EngineMetrics("m", profile.kv_blocks))
        engine = asyncio.create_task(scheduler.run())
        seqs = [pooled(40), pooled(40)]
        chat = Sequence(prompt_tokens=list(range(1000, 1040)), max_tokens=3, stop_reason="length", arrival=0.0)
        try:
            for seq in (*seqs, chat):
                scheduler.submit(seq)
            for seq in (*seqs, chat):
                while not seq.finished:
                    await seq.wait_beyond(seq.generated)
        finally:
            engine.cancel()
        return scheduler, seqs, chat

    scheduler, seqs, chat = asyncio.run(run())
    assert all(s.state is SeqState.FINISHED and s.finish_reason == "stop" and s.generated == 0 for s in seqs)
    assert all(s.cached_tokens == 0 and s.hashes == [] for s in seqs)  # no prefix caching for pooling
    assert chat.generated == 3 and chat.finish_reason == "length"
    metrics = scheduler.metrics
    assert metrics.generation_tokens == 3 and metrics.prompt_tokens == 120
    assert metrics.prefix_queries == 40  # only the generation's prompt asks the cache
    assert metrics.success == {"stop": 2, "length": 1} and metrics.ttft.count == 1 and metrics.e2e.count == 3
    assert scheduler.cache.used == 0 and scheduler.cache.cached == 2  # the chat prompt's full blocks stay cached
