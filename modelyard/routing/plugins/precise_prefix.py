"""Scores replicas by the longest prefix of the request that the engine says it holds: held leading blocks / the
request's blocks, from the replicas' own KV events (routing/kv_events.py into routing/kv_index.py), with the
request's block keys computed as the engine computes them (its /tokenize, or the model's tokenizer loaded in the
gateway with `tokenizer: local`, then vLLM's block chain: routing/tokenize.py). Replicas that publish no events
score 0 (their models keep the approximate `default`).

A prompt that no replica holds much of (best under `cold_below`) is placed by rendezvous hashing of its head's key
among the replicas whose load is within `cold_slack` of the mean: the same choice in every gateway process and for
every request of a burst that shares a new prefix, before any event about it has come back. Placement under
capacity (`cold_room`, on by default): among those, the replica with room for the most copies of the prompt's
blocks in its KV cache (its size from `vllm:cache_config_info`, what it holds from its events; without a size, the
one that holds least) goes first, the hash order deciding among equals: new prefixes spread over the caches while
they fill, instead of evicting prefixes still in use where the hash happens to point, and once every cache is full
the hash order alone decides. Every gateway worker hears the same events, so they choose alike. Until the events of
a placement come back (a prompt that waits in the engine's queue is stored only when admitted), the scorer counts
the blocks it sent there, for `reserve_s`, in a second, pending index: they count as held (a burst of a new prefix
follows its first request) and against the replica's room.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint
from modelyard.routing.kv_events import KVEventFeed
from modelyard.routing.kv_index import KVIndex
from modelyard.routing.tokenize import EngineTokens, TokenizeError

TYPE = "precise-prefix"
KIND = "scorer"
SYNC_EVERY_S = 0.25
JOIN_WAIT_S = 0.5
DEFAULT_BLOCK_SIZE = 16

log = logging.getLogger(__name__)


class Params(PluginParams):
    max_blocks: Annotated[int, Field(ge=1, le=1_048_576)] = 8192  # of a request's leading blocks
    index_blocks: Annotated[int, Field(ge=1)] = 262_144  # per replica: the index's bound (past it, oldest first)
    tokenize_cache: Annotated[int, Field(ge=0)] = 4096  # prompts whose keys are kept
    cold_below: Annotated[float, Field(ge=0, le=1)] = 0.5
    head_blocks: Annotated[int, Field(ge=1)] = 4
    cold_slack: Annotated[float, Field(ge=0)] = 0.25
    cold_room: bool = True  # a cold prompt prefers a replica with room left in its KV cache
    reserve_s: Annotated[float, Field(ge=0)] = 2.0  # how long a cold placement is remembered before its events


class PrecisePrefixScorer:
    def __init__(self, params: Params, context: Context) -> None:
        self.params, self.context = params, context
        self.index = KVIndex(params.index_blocks)
        self.feed = KVEventFeed(self.index)
        self.tokens = EngineTokens(params.tokenize_cache, params.max_blocks)
        self._synced_at = float("-inf")
        self.pending = KVIndex(params.index_blocks)  # blocks sent to replicas whose events may not have come yet
        self._expiry: deque[tuple[float, int, tuple[int, ...]]] = deque()  # (until, replica, keys), oldest first

    async def prepare(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> None:
        now = self.context.clock()
        if now - self._synced_at >= SYNC_EVERY_S:
            self._synced_at = now
            new = self.feed.sync(endpoints)
            if new:  # a replica just subscribed to: what it holds already, from its replay buffer, briefly awaited
                await asyncio.wait([asyncio.ensure_future(s.joined.wait()) for s in new], timeout=JOIN_WAIT_S)
        if request.kv_keys is not None:
            return
        local = self.context.tokenizer  # the model's tokenizer in the gateway: no round trip (any replica's events)
        target = min((e for e in endpoints if e.ready and e.kv_events and (local or e.tokenize_path)),
                     key=lambda e: e.in_flight, default=None)
        if target is None or (local is None and target.tokenize_path is None):
            return
        block_size = target.kv_block_size or self.index.block_sizes.get(target.replica) or DEFAULT_BLOCK_SIZE
        try:
            request.kv_keys, request.prompt_tokens = await self.tokens.prompt(
                request.payload, target.upstream_model or request.model, target.url, target.tokenize_path or "",
                block_size, target.kv_hash_seed or "0", local)
        except TokenizeError as exc:
            log.warning("no block keys for a request to %s: %s", request.model, exc)
            request.kv_keys = ()

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        keys = request.kv_keys
        scores = [0.0] * len(endpoints)
        if not keys:
            return scores
        total = len(keys)
        self._expire()
        matched = self.index.matches(keys)
        for replica, depth in self.pending.matches(keys).items():
            if depth > matched.get(replica, 0):
                matched[replica] = depth
        best = 0
        if matched:
            replicas = [e.replica if e.kv_events else -1 for e in endpoints]
            for replica, depth in matched.items():
                if replica in replicas:
                    scores[replicas.index(replica)] = depth / total
                    best = max(best, depth)
        if best < self.params.cold_below * total:
            chosen = self.rendezvous(keys, endpoints)
            if chosen is not None:
                scores[chosen] = 1.0
        return scores

    def rendezvous(self, keys: Sequence[int], endpoints: Sequence[Endpoint]) -> int | None:
        """The first candidate with events, in the order that highest-random-weight hashing of the head's key gives
        them, whose load is within `cold_slack` of the mean (consistent hashing with bounded loads)."""
        head = keys[min(self.params.head_blocks, len(keys)) - 1]
        candidates = [i for i, e in enumerate(endpoints) if e.kv_events]
        if not candidates:
            return None
        order = sorted(candidates, key=lambda i: hash((head, endpoints[i].replica)), reverse=True)
        loads = [max(e.in_flight, e.running + e.waiting) for e in endpoints]
        bound = sum(loads[i] for i in candidates) / len(candidates) * (1.0 + self.params.cold_slack) + 1.0
        within = [i for i in order if loads[i] <= bound] or order[:1]
        if not self.params.cold_room:
            return within[0]
        need = len(keys)
        return max(within, key=lambda i: self.room(endpoints[i]) // need)  # max keeps the first of equals

    def room(self, endpoint: Endpoint) -> int:
        """Blocks its KV cache can take without evicting any; minus what it holds when its size is unknown."""
        held = self.index.blocks(endpoint.replica) + self.pending.blocks(endpoint.replica)
        return max(0, endpoint.kv_blocks - held) if endpoint.kv_blocks is not None else -held

    def _expire(self) -> None:
        now = self.context.clock()
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, replica, keys = expiry.popleft()
            self.pending.removed(replica, keys)

    def routed(self, request: RouteRequest, endpoint: Endpoint) -> None:
        keys = request.kv_keys
        if not keys or not endpoint.kv_events or self.index.holds(endpoint.replica, keys[-1]):
            return  # nothing new there
        self.pending.stored(endpoint.replica, keys)
        self._expiry.append((self.context.clock() + self.params.reserve_s, endpoint.replica, keys))

    def finished(self, request: RouteRequest, endpoint: Endpoint) -> None:
        pass

    async def close(self) -> None:
        await self.feed.close()


def create(params: Params, context: Context) -> PrecisePrefixScorer:
    return PrecisePrefixScorer(params, context)
