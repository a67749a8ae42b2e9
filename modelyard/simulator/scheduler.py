from __future__ import annotations

import asyncio
import enum
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from modelyard.kv_hash import BlockHasher
from modelyard.simulator.kvcache import CacheEvent, PrefixCache
from modelyard.simulator.latency import blocks_for, max_cacheable_blocks, step_s, with_jitter
from modelyard.simulator.metrics import EngineMetrics
from modelyard.simulator.profiles import Profile


class SeqState(enum.Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODE = "decode"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request inside the engine; the HTTP side waits on it for tokens."""

    prompt_tokens: list[int]
    max_tokens: int
    stop_reason: str  # the finish_reason once max_tokens are out: "length" if the client capped it, else "stop"
    arrival: float
    hashes: list[int] = field(default_factory=list)
    state: SeqState = SeqState.WAITING
    cached_tokens: int = 0
    private_blocks: int = 0
    generated: int = 0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finish_reason: str | None = None
    waiter: asyncio.Future[None] | None = None
    sink: Callable[[], None] | None = None  # called for each token instead of notify, by a direct stream writer
    pooling: bool = False  # an embedding or rerank input: prefill only, done at the end of its first step
    # its prompt's KV cache came from a prefill replica (simulator/disagg.py): its first step is a decode step, with
    # no prefill to pay
    remote_prefill: bool = False

    @property
    def finished(self) -> bool:
        return self.state is SeqState.FINISHED

    def notify(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait_beyond(self, delivered: int) -> None:
        """Returns once more than `delivered` tokens are out, or the sequence has finished."""
        if self.generated > delivered or self.finished:
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiter = waiter
        await waiter


class Scheduler:
    """The engine loop: each step admits waiting requests (up to max_num_seqs, if their KV blocks fit), prefills
    the new ones and decodes one token for every running one, then sleeps for the step's modelled duration.

    A prompt's prefill is in the same step as the running sequences' decodes (latency.step_s), so on a replica that
    does both, a long prompt arriving stalls every stream it decodes for its whole prefill: the inter-token latency
    that prefill/decode disaggregation removes. A sequence whose KV cache came from a prefill replica
    (`remote_prefill`) is admitted as a decode: its first step costs what a decode step costs.

    A pooling sequence (an embedding or rerank input) is admitted and prefilled like a prompt, holding its KV
    blocks and a batch slot for that one step, and finishes at its end without a token; it neither looks up nor
    fills the prefix cache (vLLM keeps prefix caching off for pooling models by default)."""

    def __init__(self, profile: Profile, metrics: EngineMetrics, rng: random.Random | None = None) -> None:
        self.profile, self.metrics = profile, metrics
        self.rng = rng or random.Random(profile.seed)
        self.cache = PrefixCache(profile.kv_blocks, profile.block_size)
        self.hasher = BlockHasher(profile.hash_seed)
        self.on_events: Callable[[list[CacheEvent]], None] | None = None  # the KV-event publisher, when there is one
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.paused = False
        self.steps = 0
        self._kick = asyncio.Event()

    def blocks_needed(self, prompt_len: int, max_tokens: int) -> int:
        return blocks_for(prompt_len + max_tokens, self.profile.block_size)

    def submit(self, seq: Sequence) -> None:
        seq.hashes = [] if seq.pooling else list(self.hasher.keys(seq.prompt_tokens, self.profile.block_size))
        self.waiting.append(seq)
        self._kick.set()

    def abort(self, seq: Sequence) -> None:
        if seq.finished:
            return
        if seq.state is SeqState.WAITING:
            self.waiting.remove(seq)
            seq.state = SeqState.FINISHED
            seq.finish_reason = "abort"
        else:
            self._finish(seq, "abort", asyncio.get_running_loop().time())
            self.running.remove(seq)
        self.metrics.finished("abort")
        seq.notify()

    def publish(self, on_events: Callable[[list[CacheEvent]], None]) -> None:
        self.cache.record = True
        self.on_events = on_events

    def flush_events(self) -> None:
        if self.on_events is not None and self.cache.events:
            self.on_events(self.cache.take_events())

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._kick.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            if self.paused or not (self.running or self.waiting):
                self._kick.clear()
                await self._kick.wait()
                start = loop.time()
                continue
            duration = self.plan_step(start)
            end = start + duration
            delay = end - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
            self._emit(end)
            now = loop.time()
            # steps keep their modelled cadence; a step that overran by a whole step restarts the clock
            start = end if now - end < max(duration, 0.001) else now

    def plan_step(self, start: float) -> float:
        """The next step begins at `start`: waiting requests admitted; its modelled duration (its decodes and the
        prefills of the prompts just admitted, but for those whose KV cache came from a prefill replica)."""
        prefills = [s for s in self._admit(start) if not s.remote_prefill]
        self.flush_events()
        decoding = len(self.running) - len(prefills)
        computed = tuple(len(s.prompt_tokens) - s.cached_tokens for s in prefills)
        self.metrics.computed_prompt_tokens += sum(computed)
        return with_jitter(step_s(self.profile, decoding, computed), self.profile.jitter, self.rng)

    def _admit(self, now: float) -> list[Sequence]:
        admitted: list[Sequence] = []
        profile = self.profile
        while self.waiting and len(self.running) < profile.max_num_seqs:
            seq = self.waiting[0]
            prompt_len = len(seq.prompt_tokens)
            hits = self.cache.hit_blocks(seq.hashes, max_cacheable_blocks(prompt_len, profile.block_size))
            private = self.blocks_needed(prompt_len, seq.max_tokens) - len(seq.hashes)
            if not self.cache.allocate(seq.hashes, private, seq.prompt_tokens):
                break
            self.waiting.popleft()
            seq.private_blocks = private
            seq.cached_tokens = hits * profile.block_size
            seq.state = SeqState.PREFILL
            seq.scheduled_at = now
            if not seq.pooling:
                self.metrics.prefix_queries += prompt_len
                self.metrics.prefix_hits += seq.cached_tokens
            self.metrics.prompt_tokens += prompt_len
            self.metrics.queue.observe(now - seq.arrival)
            self.running.append(seq)
            admitted.append(seq)
        return admitted

    def _emit(self, now: float) -> None:
        self.steps += 1
        metrics = self.metrics
        itl = metrics.itl.observe
        done = False
        pooled = 0
        for seq in self.running:
            if seq.state is SeqState.DECODE:
                itl(now - seq.last_token_at)  # type: ignore[operator]
            elif seq.pooling:
                self._finish(seq, "stop", now)
                metrics.finished("stop")
                done = True
                pooled += 1
                seq.notify()
                continue
            else:
                seq.state = SeqState.DECODE
                seq.first_token_at = now
                metrics.ttft.observe(now - seq.arrival)
            seq.last_token_at = now
            seq.generated += 1
            if seq.generated >= seq.max_tokens:
                self._finish(seq, seq.stop_reason, now)
                metrics.finished(seq.stop_reason)
                done = True
            if seq.sink is not None:
                seq.sink()
            else:
                seq.notify()
        metrics.generation_tokens += len(self.running) - pooled
        if done:
            self.running = [s for s in self.running if not s.finished]

    def _finish(self, seq: Sequence, reason: str, now: float) -> None:
        seq.state = SeqState.FINISHED
        seq.finish_reason = reason
        self.cache.release(seq.hashes, seq.private_blocks)
        if reason == "abort":
            return
        self.metrics.e2e.observe(now - seq.arrival)
        if seq.generated > 1 and seq.first_token_at is not None:
            self.metrics.tpot.observe((now - seq.first_token_at) / (seq.generated - 1))
