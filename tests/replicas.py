"""Endpoints and requests for routing tests, without servers."""

from __future__ import annotations

from typing import Any

from modelyard.routing.contracts import RouteRequest
from modelyard.routing.endpoints import Endpoint, ReplicaState


def replicas(count: int, model: str = "m", **fields: Any) -> list[Endpoint]:
    """`count` ready replicas; a field given as a list sets one value per replica."""
    out = []
    for index in range(count):
        values = {"state": ReplicaState.READY,
                  **{k: (v[index] if isinstance(v, list) else v) for k, v in fields.items()}}
        out.append(Endpoint(model=model, replica=index, url=f"http://127.0.0.{index + 1}:9000", **values))
    return out


def request(text: str = "", model: str = "m", session: str | None = None) -> RouteRequest:
    return RouteRequest(model, {"model": model, "prompt": text}, session)
