from __future__ import annotations

import contextlib
import os
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import prometheus_client
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# every metric name of modelyard's own, in one place
REQUESTS_TOTAL = "modelyard_requests"
REQUEST_SECONDS = "modelyard_request_duration_seconds"
TTFT_SECONDS = "modelyard_time_to_first_token_seconds"
IN_FLIGHT = "modelyard_requests_in_flight"
REPLICAS = "modelyard_replicas"
REPLICA_RESTARTS = "modelyard_replica_restarts"
REPLICAS_DESIRED = "modelyard_replicas_desired"
ENGINE_RUNNING = "modelyard_engine_requests_running"
ENGINE_WAITING = "modelyard_engine_requests_waiting"
ENGINE_KV_USAGE = "modelyard_engine_kv_cache_usage_ratio"
WATCHDOG_SECONDS = "modelyard_watchdog_probe_seconds"
CONTROL_DECISIONS = "modelyard_control_decisions"
TOKENS_TOTAL = "modelyard_tokens"
RETRIES_TOTAL = "modelyard_upstream_retries"
PREFILL_LEGS_TOTAL = "modelyard_prefill_legs"
REJECTIONS_TOTAL = "modelyard_rejections"
QUEUE_DEPTH = "modelyard_queue_depth"
EJECTIONS_TOTAL = "modelyard_replica_ejections"
USAGE_BUFFERED = "modelyard_usage_buffered_records"
ROUTING_PLUGIN_SECONDS = "modelyard_routing_plugin_seconds"
ROUTING_DECISION_SECONDS = "modelyard_routing_decision_seconds"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ROUTING_FILE_PREFIX = "routing_"  # in the multiprocess folder, beside prometheus_client's own files
ROUTING_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class FastHistogram:
    """A histogram for the routing hot path: observing is one bisect and two adds (prometheus_client's takes a
    lock and costs microseconds); RoutingTimings renders it."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(ROUTING_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(ROUTING_BUCKETS, seconds)] += 1
        self.sum += seconds

    def copy(self) -> FastHistogram:
        other = FastHistogram()
        other.counts, other.sum = list(self.counts), self.sum
        return other

    def add(self, counts: list[int], total: float) -> None:
        if len(counts) != len(self.counts):
            raise ValueError("bucket layouts differ")
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.sum += total

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip(ROUTING_BUCKETS, self.counts, strict=False):
            running += count
            out.append((repr(bound), float(running)))
        out.append(("+Inf", float(running + self.counts[-1])))
        return out


class RoutingTimings(Collector):
    """Time spent choosing replicas: per plugin call and per whole decision, by model."""

    def __init__(self, registry: CollectorRegistry | None = None, shared_dir: Path | None = None) -> None:
        self._plugins: dict[tuple[str, str], FastHistogram] = {}
        self._decisions: dict[str, FastHistogram] = {}
        self.shared_dir = shared_dir  # several worker processes: each publishes its own there, /metrics sums them
        if registry is not None:
            registry.register(self)

    def plugin(self, model: str, plugin: str) -> FastHistogram:
        return self._plugins.setdefault((model, plugin), FastHistogram())

    def decision(self, model: str) -> FastHistogram:
        return self._decisions.setdefault(model, FastHistogram())

    def snapshot(self) -> dict[str, list[Any]]:
        return {"plugins": [[m, p, h.counts, h.sum] for (m, p), h in self._plugins.items()],
                "decisions": [[m, h.counts, h.sum] for m, h in self._decisions.items()]}

    def publish(self) -> None:
        """Writes this process's timings where the other workers' /metrics read them (several workers only)."""
        if self.shared_dir is None:
            return
        path = self.shared_dir / f"{ROUTING_FILE_PREFIX}{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.snapshot()))
        tmp.replace(path)

    def _merged(self) -> tuple[dict[tuple[str, str], FastHistogram], dict[str, FastHistogram]]:
        """This process's timings plus those the other workers published (dead workers' too: counters)."""
        if self.shared_dir is None:
            return self._plugins, self._decisions
        plugins = {k: h.copy() for k, h in self._plugins.items()}
        decisions = {k: h.copy() for k, h in self._decisions.items()}
        own = f"{ROUTING_FILE_PREFIX}{os.getpid()}.json"
        for path in self.shared_dir.glob(f"{ROUTING_FILE_PREFIX}*.json"):
            if path.name == own:
                continue
            with contextlib.suppress(OSError, ValueError, TypeError):
                data = orjson.loads(path.read_bytes())
                for model, plugin, counts, total in data["plugins"]:
                    plugins.setdefault((model, plugin), FastHistogram()).add(counts, total)
                for model, counts, total in data["decisions"]:
                    decisions.setdefault(model, FastHistogram()).add(counts, total)
        return plugins, decisions

    def collect(self) -> Iterator[HistogramMetricFamily]:
        merged_plugins, merged_decisions = self._merged()
        plugins = HistogramMetricFamily(ROUTING_PLUGIN_SECONDS, "Time of one routing plugin call",
                                        labels=["model", "plugin"])
        for (model, plugin), histogram in merged_plugins.items():
            plugins.add_metric([model, plugin], histogram.buckets(), histogram.sum)
        decisions = HistogramMetricFamily(ROUTING_DECISION_SECONDS, "Time of one routing decision (all plugins)",
                                          labels=["model"])
        for model, histogram in merged_decisions.items():
            decisions.add_metric([model], histogram.buckets(), histogram.sum)
        yield plugins
        yield decisions


def printable(value: Any) -> str:
    """A label value as it is safe to write into the exposition: a key's name (the client's side of it came from
    `modelyard keys create` or /admin/keys, which refuse control characters now; older rows may have them) with
    its NUL, newline or escape sequences written as escapes, never raw."""
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class Counter(prometheus_client.Counter):
    """A counter whose label values are `printable`."""

    def labels(self, *values: Any, **named: Any) -> Counter:
        return super().labels(*map(printable, values), **{k: printable(v) for k, v in named.items()})


class Histogram(prometheus_client.Histogram):
    """A histogram whose label values are `printable`."""

    def labels(self, *values: Any, **named: Any) -> Histogram:
        return super().labels(*map(printable, values), **{k: printable(v) for k, v in named.items()})


class GatewayMetrics:
    """The gateway's Prometheus metrics, in a registry of their own (no global state).

    With several gateway worker processes, each is started with $PROMETHEUS_MULTIPROC_DIR set (prometheus_client
    reads it when imported) and passes that folder as `multiprocess_dir`: every process writes its values to
    files there and /metrics, whichever worker answers it, adds them up (gauges by their multiprocess_mode).
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(REQUESTS_TOTAL, "Requests by model, key name and HTTP status",
                                ["model", "key", "status"], registry=r)
        self.duration = Histogram(REQUEST_SECONDS, "End-to-end request latency", ["model", "key"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(TTFT_SECONDS, "Time to the first byte of the engine's answer", ["model", "key"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(IN_FLIGHT, "Requests being relayed", ["model"], registry=r,
                               multiprocess_mode="livesum")
        # the same in every worker (the supervisor's table): the last value written, by the worker scraped last
        self.replicas = Gauge(REPLICAS, "Replicas by model and state", ["model", "state"], registry=r,
                              multiprocess_mode="mostrecent")
        self.desired = Gauge(REPLICAS_DESIRED, "Replicas the control plane wants (fixed, autoscaled, pool residency)",
                             ["model"], registry=r, multiprocess_mode="mostrecent")
        self.decisions = Gauge(CONTROL_DECISIONS, "The control plane's decisions since `up` started, by action "
                               "(scale, start, stop, sleep, wake, held)", ["model", "action"], registry=r,
                               multiprocess_mode="mostrecent")
        replica = ["model", "replica"]
        self.engine_running = Gauge(ENGINE_RUNNING, "Requests the replica's engine runs, as last scraped", replica,
                                    registry=r, multiprocess_mode="mostrecent")
        self.engine_waiting = Gauge(ENGINE_WAITING, "Requests waiting in the replica's engine, as last scraped",
                                    replica, registry=r, multiprocess_mode="mostrecent")
        self.engine_kv = Gauge(ENGINE_KV_USAGE, "The replica's KV cache usage (0..1), as last scraped", replica,
                               registry=r, multiprocess_mode="mostrecent")
        self.watchdog = Gauge(WATCHDOG_SECONDS, "The replica's last watchdog probe (a real generation): its seconds; "
                              "-1 failed, 0 none yet", replica, registry=r, multiprocess_mode="mostrecent")
        self.restarts = Gauge(REPLICA_RESTARTS, "Restarts of a replica since start", ["model", "replica"], registry=r,
                              multiprocess_mode="mostrecent")
        self.tokens = Counter(TOKENS_TOTAL, "Tokens by model, key name and kind (prompt, completion)",
                              ["model", "key", "kind"], registry=r)
        self.retries = Counter(RETRIES_TOTAL, "Attempts retried on another replica", ["model"], registry=r)
        self.prefill_legs = Counter(PREFILL_LEGS_TOTAL, "Prefill legs of a disaggregated model's requests, by how "
                                    "they ended (handed_off, no_handoff, refused, no_prefill_replica)",
                                    ["model", "outcome"], registry=r)
        self.rejections = Counter(REJECTIONS_TOTAL, "Requests turned away, by reason", ["model", "key", "reason"],
                                  registry=r)
        self.queue_depth = Gauge(QUEUE_DEPTH, "Requests waiting in a model's admission queue", ["model"], registry=r,
                                 multiprocess_mode="livesum")
        self.ejections = Counter(EJECTIONS_TOTAL, "Passive outlier ejections of a replica", ["model", "replica"],
                                 registry=r)
        self.usage_buffered = Gauge(USAGE_BUFFERED, "Usage records not yet written to the store", registry=r,
                                    multiprocess_mode="livesum")
        self.routing = RoutingTimings(r, multiprocess_dir)  # not in prometheus_client's files: published apart

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        merged.register(self.routing)  # every worker's decisions: its own live, the others' as they published them
        return generate_latest(merged)
