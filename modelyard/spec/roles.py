"""Prefill/decode disaggregation (`roles:` of a model): N replicas that only prefill prompts, M that only decode.

A request to such a model goes to a prefill replica first (chosen by the model's routing profile, prefix-aware),
which computes the prompt's KV cache and hands it over; then to a decode replica (chosen by `decode_routing`,
load-aware by default), which generates the answer from that KV cache (gateway/disagg.py). The replicas are
numbered prefill first: 0 to N-1 prefill, N to N+M-1 decode. Whether an engine can do this is its adapter's to say
(`EngineAdapter.disaggregates`); the loader checks it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from modelyard.spec.common import NAME_PATTERN, Strict

Role = Literal["prefill", "decode"]
PREFILL: Role = "prefill"
DECODE: Role = "decode"


class RolesSpec(Strict):
    prefill: Annotated[int, Field(ge=1, le=64)]
    decode: Annotated[int, Field(ge=1, le=64)]
    # the routing profile of the decode leg (the prefill leg routes with the model's own `routing`)
    decode_routing: Annotated[str, Field(pattern=NAME_PATTERN)] = "least-load"

    @property
    def replicas(self) -> int:
        return self.prefill + self.decode

    def role_of(self, replica: int) -> Role:
        """The role of replica number `replica`: prefill ones first; any beyond (a rollout's surge) decode."""
        return PREFILL if replica < self.prefill else DECODE
