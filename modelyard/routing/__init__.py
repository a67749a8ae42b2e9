from __future__ import annotations

from modelyard.routing.endpoints import Endpoint, EndpointTable, ReplicaState
from modelyard.routing.router import RoundRobinRouter

__all__ = ["Endpoint", "EndpointTable", "ReplicaState", "RoundRobinRouter"]
