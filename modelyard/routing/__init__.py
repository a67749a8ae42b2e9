from __future__ import annotations

from modelyard.routing.contracts import RouteRequest
from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState
from modelyard.routing.pipeline import Router

__all__ = ["Endpoint", "EndpointTable", "ReplicaState", "RouteRequest", "Router"]
