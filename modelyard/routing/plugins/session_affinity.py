"""Keeps a session on the replica it last used (session id: the x-session-id header, else the OpenAI `user`
field): 1 for that replica, 0 for the others. When that replica is saturated, or gone, every replica scores 0, the
other scorers choose, and the session moves to the new replica. Sessions are kept in a bounded LRU."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

from modelyard.routing.contracts import Context, PluginParams, RouteRequest
from modelyard.routing.endpoints import Endpoint
from modelyard.routing.plugins.saturation_filter import saturated

TYPE = "session-affinity"
KIND = "scorer"


class Params(PluginParams):
    max_sessions: Annotated[int, Field(ge=1)] = 100_000
    max_waiting: Annotated[int, Field(ge=0)] = 4
    max_kv_usage: Annotated[float, Field(gt=0, le=1)] = 0.95
    max_in_flight: Annotated[int, Field(ge=1)] | None = None


class SessionAffinityScorer:
    def __init__(self, params: Params) -> None:
        self.params = params
        self.sessions: OrderedDict[str, tuple[int, str]] = OrderedDict()  # session -> (replica, its url)

    def score(self, request: RouteRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        scores = [0.0] * len(endpoints)
        where = self.sessions.get(request.session) if request.session is not None else None
        if where is None:
            return scores
        p = self.params
        for i, endpoint in enumerate(endpoints):
            if (endpoint.replica, endpoint.url) == where:
                if not saturated(endpoint, p.max_waiting, p.max_kv_usage, p.max_in_flight):
                    scores[i] = 1.0
                break
        return scores

    def routed(self, request: RouteRequest, endpoint: Endpoint) -> None:
        if request.session is None:
            return
        sessions = self.sessions
        sessions[request.session] = (endpoint.replica, endpoint.url)
        sessions.move_to_end(request.session)
        while len(sessions) > self.params.max_sessions:
            sessions.popitem(last=False)

    def finished(self, request: RouteRequest, endpoint: Endpoint) -> None:
        pass


def create(params: Params, context: Context) -> SessionAffinityScorer:
    return SessionAffinityScorer(params)
