"""Prefill/decode disaggregation: a request to a model with `roles:` (spec/roles.py) in two legs.

1. The prefill leg: the request, with `max_tokens: 1`, `stream: false`, no `stream_options` (nor `min_tokens`), and
   `kv_transfer_params: {"do_remote_decode": true, "do_remote_prefill": false, "remote_engine_id": null,
   "remote_block_ids": null, "remote_host": null, "remote_port": null}`, to a prefill replica chosen by the model's
   routing profile (prefix-aware: the prompt's cache lives on the prefill replicas). Its answer's
   `kv_transfer_params` say where the decode replica fetches the KV cache (vLLM's NIXL connector protocol, as
   vLLM's toy_proxy_server speaks it).
2. The decode leg: the original request (streamed or not, as the client asked) with those `kv_transfer_params`, to
   a decode replica chosen by `roles.decode_routing` (load-aware by default), through the gateway's one relay
   (`Gateway.relay`): its retries, failure classification, timeouts, usage (the decode answer's: the whole
   prompt and completion) and record, in the request's one scope. TTFT and the total timeout count from the start
   of the prefill leg.

When the prefill leg fails:
- a replica fault (refused or reset connection, timeout, 502/503/504) counts against that replica as on the relay
  (towards its ejection) and the leg is retried on another prefill replica, within the retry budget;
- an answer about the request itself (a 4xx, a 500 with its JSON error) goes back to the client as it is, recorded
  as the request's answer, and no decode leg follows;
- no prefill replica could do it (none ready, or every one tried failed): the decode leg goes without
  `kv_transfer_params`, and the decode replica prefills the prompt itself (slower, but served);
- a 200 without `kv_transfer_params` (an engine not configured for the connector): the same.
A client's own `kv_transfer_params` never reach a replica: the gateway sets them on both legs (a client must not
point a decode replica at an address of its choosing). Each way a prefill leg ends is counted in
`modelyard_prefill_legs_total{outcome}`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response

from modelyard.gateway.errors import openai_shaped
from modelyard.gateway.failover import replica_unwell
from modelyard.gateway.relay import UPSTREAM_ERRORS, Outcome
from modelyard.gateway.request import STREAMED_PATHS, Call
from modelyard.gateway.upstream import Connection, StaleConnection
from modelyard.routing.contracts import RouteRequest
from modelyard.routing.endpoints import Endpoint
from modelyard.spec.roles import DECODE, PREFILL

if TYPE_CHECKING:
    from modelyard.gateway.app import Gateway

log = logging.getLogger("modelyard.gateway")
TRANSFER = "kv_transfer_params"
# what the prefill leg asks for (vLLM's toy_proxy_server.py: send_request_to_service)
REMOTE_DECODE = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                 "remote_block_ids": None, "remote_host": None, "remote_port": None}
PREFILL_ATTEMPTS = 3  # prefill replicas tried, as the relay tries replicas (within the same retry budget)
NOT_FOR_PREFILL = frozenset({"stream_options", "min_tokens", "min_completion_tokens", TRANSFER})


def prefill_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The prefill leg's body: the request, cut to its prompt's prefill and one token, not streamed."""
    out = {k: v for k, v in payload.items() if k not in NOT_FOR_PREFILL}
    out.update(stream=False, max_tokens=1, kv_transfer_params=dict(REMOTE_DECODE))
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    return out


def handed_off(content: bytes) -> dict[str, Any] | None:
    """The prefill answer's `kv_transfer_params`, or None when it has none."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    params = data.get(TRANSFER) if isinstance(data, dict) else None
    return params if isinstance(params, dict) and params else None


class Disaggregation:
    """The prefill leg of the gateway's requests to disaggregated models; the decode leg is the gateway's relay."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @staticmethod
    def applies(call: Call) -> bool:
        return call.model.roles is not None and call.path in STREAMED_PATHS

    async def serve(self, call: Call) -> Response:
        started = time.perf_counter()
        prefilled = await self._prefill(call, started)
        if isinstance(prefilled, Response):
            return prefilled
        payload = {k: v for k, v in call.payload.items() if k != TRANSFER}
        if prefilled is not None:
            payload[TRANSFER] = prefilled
        if payload != call.payload:
            call.payload, call.body = payload, orjson.dumps(payload)
        call.route = RouteRequest(call.model.name, payload, call.route.session, role=DECODE)
        call.relay_started = started
        return await self.gateway.relay(call)

    async def _prefill(self, call: Call, started: float) -> dict[str, Any] | Response | None:
        gateway, model = self.gateway, call.model.name
        payload = prefill_payload(call.payload)
        leg = dataclasses.replace(call, body=orjson.dumps(payload), payload=payload, stream=False,
                                  route=RouteRequest(model, call.payload, call.route.session, role=PREFILL))
        await gateway.router.prepare(leg.route)
        tried: list[Endpoint] = []
        for attempt in range(PREFILL_ATTEMPTS):
            if attempt and not gateway.may_retry(model):
                break
            try:
                endpoint = gateway.router.pick(leg.route, exclude=tried)
                if endpoint is None:
                    break
                if attempt:
                    gateway.metrics.retries.labels(model).inc()
                tried.append(endpoint)
                answer = await self._leg(leg, endpoint, started)
            finally:
                if attempt:
                    gateway.retry_budget.retried(model)
            if answer is None:
                continue  # the replica failed: another one
            status, content = answer
            if status != 200:
                return self._refused(call, endpoint, status, content, started)
            params = handed_off(content)
            self._count(model, "handed_off" if params is not None else "no_handoff")
            if params is None:
                log.warning("%s answered its prefill without kv_transfer_params: the decode replica prefills",
                            endpoint.id)
            return params
        self._count(model, "no_prefill_replica")
        log.warning("model %s: no prefill replica could prefill (tried %s): the decode replica prefills", model,
                    ", ".join(e.id for e in tried) or "none ready")
        return None

    async def _leg(self, leg: Call, endpoint: Endpoint, started: float) -> tuple[int, bytes] | None:
        """The prefill on one replica: its status and body, or None when the replica failed (counted as on the
        relay: towards its ejection)."""
        gateway, model = self.gateway, leg.model.name
        data = leg.body
        if endpoint.upstream_model and endpoint.upstream_model != model:
            data = orjson.dumps({**leg.payload, "model": endpoint.upstream_model})
        # the prefill's answer is the request's first token: it comes within first_byte_s (and the total's rest)
        timeouts = leg.model.timeouts
        now = time.perf_counter()
        bound = min(timeouts.first_byte_s, timeouts.total_s - (now - started))
        gateway.take(endpoint, model)
        try:
            try:  # `send_request` bounds an unstreamed request by the total from its start: a start that leaves `bound`
                upstream = await self._send(endpoint, leg, data, now - (timeouts.total_s - bound))
            except UPSTREAM_ERRORS as exc:
                gateway.failed(endpoint, hung=isinstance(exc, TimeoutError))
                return None
            try:
                async with asyncio.timeout(max(0.0, bound - (time.perf_counter() - now))):
                    content = await upstream.read()
            except UPSTREAM_ERRORS as exc:
                upstream.close()
                gateway.failed(endpoint, hung=isinstance(exc, TimeoutError))
                return None
            except BaseException:  # cancelled (the client left): closing aborts the engine's work
                upstream.close()
                raise
            upstream.release()
            if replica_unwell(upstream.status):
                gateway.failed(endpoint)
                return None
            gateway.outliers.success(endpoint, gateway.table.of(model))  # an answer about the request too
            return upstream.status, content
        finally:
            gateway.release(endpoint, model)
            gateway.router.finished(leg.route, endpoint)

    async def _send(self, endpoint: Endpoint, leg: Call, data: bytes, started: float) -> Connection:
        """The gateway's send; once more on the same replica when a pooled connection was stale."""
        try:
            upstream, _ = await self.gateway.send_request(endpoint, leg, data, started)
        except StaleConnection:
            upstream, _ = await self.gateway.send_request(endpoint, leg, data, started)
        return upstream

    def _refused(self, call: Call, endpoint: Endpoint, status: int, content: bytes, started: float) -> Response:
        """The prefill replica's answer about the request: the client's answer, recorded as the request's."""
        gateway = self.gateway
        status = gateway.engines[call.model.name].answer_status(status, content)
        self._count(call.model.name, "refused")
        content = openai_shaped(status, content)
        gateway.record(call, Outcome(status=status, started=started, first_byte=time.perf_counter(),
                                     replica=endpoint.id))
        return Response(content, status_code=status, media_type="application/json",
                        headers={"x-modelyard-replica": endpoint.id})

    def _count(self, model: str, outcome: str) -> None:
        self.gateway.child(self.gateway.metrics.prefill_legs, model, outcome).inc()


__all__ = ["REMOTE_DECODE", "Disaggregation", "handed_off", "prefill_payload"]
