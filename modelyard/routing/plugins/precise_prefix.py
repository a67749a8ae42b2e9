"""Scores replicas by the longest prefix of the request that the engine says it holds: held leading blocks / the
request's blocks, from the replicas' own KV events (routing/kv_events.py into routing/kv_index.py), with the
request's block keys computed as the engine computes them (its /tokenize, or the model's tokenizer loaded in the
gateway with `tokenizer: local`, then vLLM's block chain: routing/tokenize.py). Replicas that publish no events
score 0 (their models keep the approximate `default`).

A prompt that no replica holds much of (best under `cold_below` of its blocks) is placed under capacity
(routing/placement.py): among the replicas whose load is within `cold_slack` of the mean, in the order rendezvous
hashing of its head gives them, the one with room for it beside the blocks in use there (`horizon_s`), else the one
whose prefixes are coldest; without `cold_room`, the hash order alone. With `spill`, a prefix whose holders are all
overloaded (`spill_load`, `spill_min`) for `spill_after_s` is placed so on one more replica, one with room for it.
Until the events of a placement come back (a prompt that waits in the engine's queue is stored only when admitted), the
scorer counts the blocks it sent there, for `reserve_s`, in a second, pending index: they count as held (a burst of
a new prefix follows its first request) and against the replica's room. With `head_keys` (on by default), a
chat's keys are those of its system head, tokenized once per head (routing/head_keys.py): a request of a known
system prompt needs no `/tokenize` round trip.
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
from modelyard.routing.head_keys import HeadKeys, tail_blocks
from modelyard.routing.kv_events import KVEventFeed
from modelyard.routing.kv_index import KVIndex
from modelyard.routing.placement import Placement, WorkingSets
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
    horizon_s: Annotated[float, Field(gt=0)] = 30.0  # blocks sent to a replica this recently are in use there
    # a hot prefix's second replica: off by default (on the tenant mix at 3x saturation its copies evicted the other
    # prompts: hit rate 0.62 against 0.94 without, docs/benchmarks.md)
    spill: bool = False
    spill_load: Annotated[float, Field(ge=1)] = 1.5  # a holder past this x the mean load (+ spill_min) is overloaded
    spill_min: Annotated[int, Field(ge=0)] = 8
    spill_after_s: Annotated[float, Field(ge=0)] = 0.5  # for so long overloaded before a second replica
    head_keys: bool = True  # a chat's keys from its system head, tokenized once per head


class PrecisePrefixScorer:
    def __init__(self, params: Params, context: Context) -> None:
        self.params, self.context = params, context
        self.index = KVIndex(params.index_blocks, on_clear=self._cleared)
        self.feed = KVEventFeed(self.index)
        self.tokens = EngineTokens(params.tokenize_cache, params.max_blocks)
        self.heads = HeadKeys(self.tokens) if params.head_keys else None
        self._synced_at = self._working_at = float("-inf")
        self._overflow: int | None = None  # id() of the request just scored as an overflow (`routed` follows `score`)
        self.pending = KVIndex(params.index_blocks)  # blocks sent to replicas whose events may not have come yet
        self._expiry: deque[tuple[float, int, tuple[int, ...]]] = deque()  # (until, replica, keys), oldest first
        self.working = WorkingSets(params.horizon_s, params.index_blocks)
        self.placement = Placement(self.working, self._held, context.clock, context.processes, params.cold_slack,
                                   params.cold_room, params.spill_load, params.spill_min, params.spill_after_s)

    def _cleared(self, replica: int) -> None:
        """The engine says it holds nothing (AllBlocksCleared, a restart, a gap it could not replay): what this
        router believed in use or on its way there goes too, or a placement would count room that is free as taken."""
        self.working.clear(replica)
        self.pending.clear(replica)
        self.placement.forget(replica)

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
            model, seed = target.upstream_model or request.model, target.kv_hash_seed or "0"
            if self.heads is not None and local is None and target.tokenize_path is not None:
                # a chat of a known system head needs no round trip, and has no count (gateway/prompt_count.py
                # then asks the engine for a key with token limits)
                request.kv_keys, request.prompt_tokens = await self.heads.prompt(
                    request.payload, model, target.url, target.tokenize_path, block_size, seed)
            else:
                request.kv_keys, request.prompt_tokens = await self.tokens.prompt(
                    request.payload, model, target.url, target.tokenize_path or "", block_size, seed, local)
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
        holders = []
        held_elsewhere = False  # warm on a replica that is no candidate (a filter took it out: saturated)
        if matched:
            positions = {e.replica: i for i, e in enumerate(endpoints) if e.kv_events}
            warm = self.params.cold_below * total
            for replica, depth in matched.items():
                at = positions.get(replica)
                if at is not None:
                    scores[at] = depth / total
                    if depth >= warm:
                        holders.append(at)
                elif depth >= warm:
                    held_elsewhere = True
        head = keys[min(self.params.head_blocks, total) - 1]
        self._overflow = id(request) if held_elsewhere and not holders else None
        if self._overflow is not None:
            return scores  # not a cold prompt: an overflow, left to the load scorer, and no new holder made of it
        if not holders:
            chosen = self.placement.place(keys, head, endpoints, matched)
            if chosen is not None:
                scores[chosen] = 1.0
        elif self.params.spill and self.placement.spill(head, endpoints, holders):
            chosen = self.placement.place(keys, head, endpoints, matched, exclude=holders, fit=True)
            if chosen is not None:
                scores[chosen] = max(scores[i] for i in holders)
        return scores

    def _held(self, replica: int) -> int:
        return self.index.blocks(replica) + self.pending.blocks(replica)

    def room(self, endpoint: Endpoint) -> int:
        return self.placement.room(endpoint)

    def _expire(self) -> None:
        now = self.context.clock()
        if now - self._working_at >= self.working.refresh_s / 4:
            self._working_at = now
            self.working.expire(now)
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, replica, keys = expiry.popleft()
            self.pending.removed(replica, keys)

    def routed(self, request: RouteRequest, endpoint: Endpoint) -> None:
        keys = request.kv_keys
        if not keys or not endpoint.kv_events:
            return
        unique = tail_blocks(request.payload, len(keys)) if self.heads is not None else 0
        self.working.touched(endpoint.replica, keys, self.context.clock(), unique)
        if self.index.holds(endpoint.replica, keys[-1]) or self._overflow == id(request):
            return  # nothing new there; or an overflow of a saturated holder: its events say whether it stays
        self.pending.stored(endpoint.replica, keys)
        self.placement.forget(endpoint.replica)
        self._expiry.append((self.context.clock() + self.params.reserve_s, endpoint.replica, keys))

    def finished(self, request: RouteRequest, endpoint: Endpoint) -> None:
        pass

    async def close(self) -> None:
        await self.feed.close()


def create(params: Params, context: Context) -> PrecisePrefixScorer:
    return PrecisePrefixScorer(params, context)
