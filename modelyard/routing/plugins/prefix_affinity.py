"""Scores replicas by how much of the request's prompt prefix they served recently (so likely hold in their KV
cache): matched leading blocks / the request's blocks. The request is recorded for the chosen replica when it is
routed, so requests that share a new prefix and arrive together follow the first one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint
from modelyard.routing.prefix_index import PrefixIndex

TYPE = "prefix-affinity"
KIND = "scorer"


class Params(PluginParams):
    block_chars: Annotated[int, Field(ge=8, le=4096)] = 64
    max_blocks: Annotated[int, Field(ge=1, le=65536)] = 256
    # per replica; None: the engine's KV cache size when it exports it (vLLM's cache_config_info), else 16384
    capacity_blocks: Annotated[int, Field(ge=1)] | None = None
    chars_per_token: Annotated[float, Field(gt=0)] = 4.0


DEFAULT_CAPACITY_BLOCKS = 16384


class PrefixAffinityScorer:
    def __init__(self, params: Params) -> None:
        self.params = params
        self.block_chars, self.max_blocks = params.block_chars, params.max_blocks
        self.index = PrefixIndex()

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
        if not matched:
            return [0.0] * len(endpoints)
        total = len(hashes)
        return [matched.get(e.replica, 0) / total for e in endpoints]

    def routed(self, request: RouteRequest, endpoint: Endpoint) -> None:
        hashes = request.prefix_hashes(self.block_chars, self.max_blocks)
        if hashes:
            self.index.check_url(endpoint.replica, endpoint.url)
            self.index.insert(endpoint.replica, hashes, self.capacity(endpoint))

    def finished(self, request: RouteRequest, endpoint: Endpoint) -> None:
        pass


def create(params: Params, context: Context) -> PrefixAffinityScorer:
    return PrefixAffinityScorer(params)
