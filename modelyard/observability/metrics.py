from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# every metric name of modelyard's own, in one place
REQUESTS_TOTAL = "modelyard_requests"
REQUEST_SECONDS = "modelyard_request_duration_seconds"
TTFT_SECONDS = "modelyard_time_to_first_token_seconds"
IN_FLIGHT = "modelyard_requests_in_flight"
REPLICAS = "modelyard_replicas"
REPLICA_RESTARTS = "modelyard_replica_restarts"
TOKENS_TOTAL = "modelyard_tokens"
RETRIES_TOTAL = "modelyard_upstream_retries"
REJECTIONS_TOTAL = "modelyard_rejections"
QUEUE_DEPTH = "modelyard_queue_depth"
EJECTIONS_TOTAL = "modelyard_replica_ejections"
USAGE_BUFFERED = "modelyard_usage_buffered_records"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    """The gateway's Prometheus metrics, in a registry of their own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(REQUESTS_TOTAL, "Requests by model, key name and HTTP status",
                                ["model", "key", "status"], registry=r)
        self.duration = Histogram(REQUEST_SECONDS, "End-to-end request latency", ["model", "key"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(TTFT_SECONDS, "Time to the first byte of the engine's answer", ["model", "key"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(IN_FLIGHT, "Requests being relayed", ["model"], registry=r)
        self.replicas = Gauge(REPLICAS, "Replicas by model and state", ["model", "state"], registry=r)
        self.restarts = Gauge(REPLICA_RESTARTS, "Restarts of a replica since start", ["model", "replica"], registry=r)
        self.tokens = Counter(TOKENS_TOTAL, "Tokens by model, key name and kind (prompt, completion)",
                              ["model", "key", "kind"], registry=r)
        self.retries = Counter(RETRIES_TOTAL, "Attempts retried on another replica", ["model"], registry=r)
        self.rejections = Counter(REJECTIONS_TOTAL, "Requests turned away, by reason", ["model", "key", "reason"],
                                  registry=r)
        self.queue_depth = Gauge(QUEUE_DEPTH, "Requests waiting in a model's admission queue", ["model"], registry=r)
        self.ejections = Counter(EJECTIONS_TOTAL, "Passive outlier ejections of a replica", ["model", "replica"],
                                 registry=r)
        self.usage_buffered = Gauge(USAGE_BUFFERED, "Usage records not yet written to the store", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
