from __future__ import annotations

import time
from collections.abc import Collection

from modelyard.routing.endpoints import Endpoint, EndpointTable


class RoundRobinRouter:
    """Round-robin over a model's ready, not ejected replicas, skipping the ones a retry excludes."""

    def __init__(self, table: EndpointTable) -> None:
        self.table = table
        self._next: dict[str, int] = {}

    def pick(self, model: str, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        now = time.monotonic()
        ready = [e for e in self.table.of(model) if e.routable(now) and e not in exclude]
        if not ready:
            return None
        index = self._next.get(model, 0)
        self._next[model] = index + 1
        return ready[index % len(ready)]
