"""Prefill/decode disaggregation as the simulator plays it: vLLM's NIXL connector protocol (`--role prefill|decode`).

The gateway sends a prefill replica the request with `max_tokens: 1`, `stream: false` and
`kv_transfer_params: {"do_remote_decode": true, ...}`: it prefills the prompt as any request (its prefill cost, in
the engine's steps) and answers with the params a decode replica fetches the KV cache by, as vLLM's
`NixlConnectorScheduler.request_finished` gives them (`do_remote_prefill: true`, `remote_block_ids`,
`remote_engine_id`, `remote_request_id`, `remote_host`, `remote_port`, `tp_size`). The decode replica, sent the
original request with those params, waits `kv_transfer_s_per_block` per block for the transfer (off the engine's
steps, as vLLM's asynchronous NIXL reads are) and is then scheduled as a decode: no prefill to pay. The block ids
are the simulator's block keys (vLLM's are its physical block numbers); nothing is really moved. Without a role the
simulator ignores `kv_transfer_params`, as vLLM without `--kv-transfer-config` does.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from starlette.types import Scope

from modelyard.simulator.api import ApiError
from modelyard.simulator.metrics import EngineMetrics
from modelyard.simulator.profiles import Profile
from modelyard.simulator.scheduler import Sequence

ROLES = ("prefill", "decode")


def transfer_params(body: dict[str, Any]) -> dict[str, Any] | None:
    """The request's `kv_transfer_params` (None when not given); 400 when it is not an object."""
    params = body.get("kv_transfer_params")
    if params is None or isinstance(params, dict):
        return params
    raise ApiError(400, "kv_transfer_params must be an object", "kv_transfer_params")


class KVConnector:
    """One replica's side of the protocol: a prefill replica hands KV caches off, a decode replica receives them."""

    def __init__(self, role: str, profile: Profile, metrics: EngineMetrics) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
        self.role, self.profile, self.metrics = role, profile, metrics
        self.engine_id = uuid.uuid4().hex

    def hands_off(self, params: dict[str, Any] | None, stream: bool) -> bool:
        """A prefill replica asked to leave the decode to another (a non-streamed request, as the gateway sends)."""
        return self.role == "prefill" and not stream and params is not None and params.get("do_remote_decode") is True

    def receives(self, params: dict[str, Any] | None) -> int | None:
        """The blocks a decode replica fetches from a prefill replica for this request, or None (it prefills)."""
        if self.role != "decode" or params is None or params.get("do_remote_prefill") is not True:
            return None
        blocks = params.get("remote_block_ids")
        if not isinstance(blocks, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
            raise ApiError(400, "kv_transfer_params.remote_block_ids must be a list of block ids",
                           "kv_transfer_params")
        if not isinstance(params.get("remote_engine_id"), str):
            raise ApiError(400, "kv_transfer_params.remote_engine_id must be a string", "kv_transfer_params")
        return len(blocks)

    async def fetch(self, blocks: int) -> None:
        """The transfer's time; the engine goes on stepping meanwhile."""
        delay = blocks * self.profile.kv_transfer_s_per_block
        if delay > 0:
            await asyncio.sleep(delay)
        self.metrics.kv_received += 1
        self.metrics.kv_received_blocks += blocks

    def handoff(self, seq: Sequence, scope: Scope, request_id: str) -> dict[str, Any] | None:
        """The params of a finished prefill (None when it did not end at its 1-token cap, as vLLM's connector)."""
        if seq.finish_reason != "length":
            return None
        host, port = scope.get("server") or ("127.0.0.1", 0)
        self.metrics.kv_sent += 1
        return {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": list(seq.hashes),
                "remote_engine_id": self.engine_id, "remote_request_id": request_id, "remote_host": host,
                "remote_port": port, "tp_size": 1}
