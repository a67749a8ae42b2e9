"""Scores replicas by how much of the request's prompt prefix they served recently (so likely hold in their KV
cache): matched leading blocks / the request's blocks. The request is recorded for the chosen replica when it is
routed, so requests that share a new prefix and arrive together follow the first one.

A prompt that no replica holds much of (best match under `cold_below`) is cold, and placed by
`cold_placement`: `least-used` scores replicas by how little of the index they fill (1 for the emptiest, 0 for
the fullest; all equal once every one is full), as vllm-router's cache_aware sends a miss to its smallest tree,
so that new prefixes spread over the caches; `hash` gives a full score to the replica that rendezvous hashing of
the prompt's head picks among the candidates (skipping the ones loaded beyond the mean by more than
`cold_slack`), the same choice in every gateway process, so that several processes, each with its own index,
still send a new prefix to one replica; `load` leaves it to the other scorers; `auto` (the default) is `hash`
when the gateway runs several processes, else `least-used`."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint
from modelyard.routing.plugins.least_inflight import min_max_inverse
from modelyard.routing.prefix_index import PrefixIndex

TYPE = "prefix-affinity"
KIND = "scorer"


class Params(PluginParams):
    block_chars: Annotated[int, Field(ge=8, le=4096)] = 256
    max_blocks: Annotated[int, Field(ge=1, le=65536)] = 64
    # per replica; None: the engine's KV cache size when it exports it (vLLM's cache_config_info), else 4096
    capacity_blocks: Annotated[int, Field(ge=1)] | None = None
    chars_per_token: Annotated[float, Field(gt=0)] = 4.0
    cold_placement: Literal["auto", "least-used", "hash", "load"] = "auto"
    cold_below: Annotated[float, Field(ge=0, le=1)] = 0.5
    head_blocks: Annotated[int, Field(ge=1)] = 4  # the head that rendezvous hashing of a cold prompt looks at
    cold_slack: Annotated[float, Field(ge=0)] = 0.25  # a cold prompt skips replicas loaded beyond mean x (1 + it)


DEFAULT_CAPACITY_BLOCKS = 4096


class PrefixAffinityScorer:
    def __init__(self, params: Params, processes: int = 1) -> None:
        self.params = params
        self.block_chars, self.max_blocks = params.block_chars, params.max_blocks
        self.index = PrefixIndex()
        cold = params.cold_placement
        self.cold = ("hash" if processes > 1 else "least-used") if cold == "auto" else cold

    def capacity(self, endpoint: Endpoint) -> int:
        if self.params.capacity_blocks is not None:
            return self.params.capacity_blocks
        tokens = endpoint.kv_tokens
        if tokens is None:
            return DEFAULT_CAPACITY_BLOCKS
        return max(1, int(tokens * self.params.chars_per_token) // self.block_chars)

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        hashes = request.prefix_hashes(self.block_chars, self.max_blocks)
        if not hashes:
            return [0.0] * len(endpoints)
        matched = self.index.matches(hashes)
        total = len(hashes)
        scores = [0.0] * len(endpoints)
        if matched:  # few replicas hold a prefix: look them up (list.index, in C) rather than every replica up
            replicas = [e.replica for e in endpoints]
            for replica, depth in matched.items():
                if replica in replicas:
                    scores[replicas.index(replica)] = depth / total
        if self.cold != "load" and (not matched or max(matched.values()) < self.params.cold_below * total):
            if self.cold == "hash":
                scores[self.rendezvous(request, endpoints)] = 1.0
            else:
                held = self.index.sizes().get
                scores = min_max_inverse([held(e.replica, 0) for e in endpoints])
        return scores

    def rendezvous(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> int:
        """The first candidate, in the order that highest-random-weight hashing of the prompt's head gives them,
        whose load is within `cold_slack` of the mean (consistent hashing with bounded loads): the same choice in
        every process as long as they see the same engine metrics (a CRC and int tuples: no per-process seed)."""
        head = zlib.crc32(request.text[:self.params.head_blocks * self.block_chars].encode())
        order = sorted(range(len(endpoints)), key=lambda i: hash((head, endpoints[i].replica)), reverse=True)
        loads = [max(e.in_flight, e.running + e.waiting) for e in endpoints]
        bound = sum(loads) / len(loads) * (1.0 + self.params.cold_slack) + 1.0
        return next((i for i in order if loads[i] <= bound), order[0])

    def routed(self, request: RouteRequest, endpoint: Endpoint) -> None:
        hashes = request.prefix_hashes(self.block_chars, self.max_blocks)
        if hashes:
            self.index.check_url(endpoint.replica, endpoint.url)
            self.index.insert(endpoint.replica, hashes, self.capacity(endpoint))

    def finished(self, request: RouteRequest, endpoint: Endpoint) -> None:
        pass


def create(params: Params, context: Context) -> PrefixAffinityScorer:
    return PrefixAffinityScorer(params, context.processes)
