"""The gateway's /metrics: what it exports of the fleet (replicas by state, desired, decisions, each replica's
engine load and watchdog), rendered with every worker's numbers; and who may read it: a scrape with the admin key
or `gateway.metrics_key_env`'s key as its bearer token, or anyone with `gateway.metrics_public: true` (the metrics
name every key and its usage: not for every API client)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from modelyard.gateway.auth import Credentials
from modelyard.gateway.errors import openai_error
from modelyard.observability.metrics import CONTENT_TYPE
from modelyard.routing.endpoints import ReplicaState

if TYPE_CHECKING:
    from modelyard.gateway.app import Gateway


class MetricsEndpoint:
    def __init__(self, gateway: Gateway, admin_key: str | None, metrics_key: str | None) -> None:
        self.gateway = gateway
        self.credentials = Credentials([admin_key, metrics_key])

    def refused(self, request: Request) -> Response | None:
        if self.gateway.spec.gateway.metrics_public:
            return None
        if not self.credentials.enabled:
            return openai_error(404, "/metrics is off: set MODELYARD_ADMIN_KEY (or gateway.metrics_key_env) and scrape "
                                "with that key as a bearer token, or set gateway.metrics_public: true",
                                "metrics_disabled")
        if not self.credentials.bearer_ok(request.headers.get("authorization")):
            return openai_error(401, "/metrics needs the admin key or the metrics key as a bearer token",
                                "invalid_metrics_key")
        return None

    async def serve(self, request: Request) -> Response:
        refused = self.refused(request)
        if refused is not None:
            return refused
        gateway, metrics = self.gateway, self.gateway.metrics
        for endpoint in gateway.table:
            labels = (endpoint.model, str(endpoint.replica))
            metrics.restarts.labels(*labels).set(endpoint.restarts)
            metrics.engine_running.labels(*labels).set(endpoint.running)
            metrics.engine_waiting.labels(*labels).set(endpoint.waiting)
            metrics.engine_kv.labels(*labels).set(endpoint.kv_usage)
            metrics.watchdog.labels(*labels).set(endpoint.watchdog_s)
        for model in gateway.spec.models:
            replicas = gateway.table.of(model.name)
            for state in ReplicaState:
                metrics.replicas.labels(model.name, state.value).set(sum(1 for e in replicas if e.state is state))
            metrics.queue_depth.labels(model.name).set(gateway.queues[model.name].waiting)
            view = gateway.fleet.get(model.name, {})
            metrics.desired.labels(model.name).set(view.get("desired", model.min_replicas))
            for action, count in view.get("events", {}).items():
                metrics.decisions.labels(model.name, action).set(count)
        if gateway.writer is not None:
            metrics.usage_buffered.set(gateway.writer.buffered)
        return Response(metrics.render(), media_type=CONTENT_TYPE)
