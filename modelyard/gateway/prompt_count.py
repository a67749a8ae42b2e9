"""The exact prompt token count that a key with token limits (a budget, a TPM) reserves at admission, where one is
cheap, so that concurrent requests cannot together pass the limit on an estimate that was too low (issue 15).

In order: the count the precise router finds with the request's block keys (its `prepare`, run here before the
admission instead of after it, and not again: the relay's `prepare` finds the keys already there); the model's
tokenizer loaded in the gateway (`tokenizer: local`); the engine's own tokenize endpoint on a ready replica (one
round trip: vLLM's /tokenize, llama.cpp's /apply-template then /tokenize), each cached per prompt
(routing/tokenize.py). None when none of them can say (the reservation then estimates: gateway/tokens.py). Keys
without token limits never come here: their hot path is unchanged.
"""

from __future__ import annotations

import logging

from modelyard.engines.base import EngineAdapter
from modelyard.routing.contracts import RouteRequest
from modelyard.routing.endpoints import EndpointTable
from modelyard.routing.pipeline import Router
from modelyard.routing.tokenize import EngineTokens, TokenizeError
from modelyard.spec.schema import BaseModelSpec
from modelyard.store.base import KeyRecord

log = logging.getLogger("modelyard.gateway")
CACHE_SIZE = 4096  # prompts per model whose count is kept


def counts_tokens(key: KeyRecord) -> bool:
    """Whether a key's limits count tokens (the only ones a prompt's count matters to)."""
    return bool(key.budget_tokens or key.tpm)


class PromptCounts:
    def __init__(self, cache_size: int = CACHE_SIZE) -> None:
        self.cache_size = cache_size
        self._tokens: dict[str, EngineTokens] = {}

    def _of(self, model: str) -> EngineTokens:
        tokens = self._tokens.get(model)
        if tokens is None:
            tokens = self._tokens[model] = EngineTokens(self.cache_size)
        return tokens

    async def count(self, route: RouteRequest, model: BaseModelSpec, router: Router, engine: EngineAdapter,
                    table: EndpointTable) -> int | None:
        pipeline = router.pipelines.get(model.name)
        if pipeline is not None and pipeline.preparing:
            await router.prepare(route)
            if route.prompt_tokens is not None:
                return route.prompt_tokens
        try:
            local = router.tokenizers.get(model.name)
            if local is not None:
                return await self._of(model.name).count(route.payload, model.name, local=local)
            counter = engine.prompt_counter(model)
            ready = table.ready(model.name)
            if counter is None or not ready:
                return None
            endpoint = min(ready, key=lambda e: e.in_flight)
            return await self._of(model.name).count(route.payload, endpoint.upstream_model or model.name,
                                                    endpoint.url, counter[0], template=counter[1])
        except TokenizeError as exc:
            log.warning("no exact prompt count for a request to %s: %s", model.name, exc)
            return None
