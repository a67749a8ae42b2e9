"""What /ui/state answers: the cluster as one gateway worker sees it, its siblings' recent traffic added in.

Replicas and their engine load come from the worker's endpoint table (the supervisor's, fed by the parent, and the
worker's own scrapes), desired replicas and strategy from the control plane's view (`Gateway.fleet`), recent
traffic from observability/recent.py, keys near their limits from the store.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from modelyard import __version__
from modelyard.observability.recent import BUCKET_S, BUCKETS, RATE_WINDOW_S, ModelWindow
from modelyard.routing.endpoints import Endpoint, ReplicaState
from modelyard.spec.schema import AnyModel, YardSpec
from modelyard.store.base import KeyRecord, Store, UsageRow

if TYPE_CHECKING:
    from modelyard.gateway.app import Gateway

FRESH_IN_FLIGHT_S = 5.0  # a sibling's in-flight counts older than this are a dead worker's
NEAR = 0.8  # a key at 80% of a limit is near it
EXPIRING_S = 24 * 3600.0
MAX_KEYS = 20


def in_flight_by_replica(gateway: Gateway, others: list[dict[str, Any]]) -> dict[str, int]:
    """Requests in flight to each replica through every worker: this one's now, its siblings' as last published."""
    counts = {e.id: e.in_flight for e in gateway.table}
    oldest = time.time() - FRESH_IN_FLIGHT_S
    for data in others:
        published, theirs = data.get("published_at"), data.get("in_flight")
        if isinstance(published, int | float) and published >= oldest and isinstance(theirs, dict):
            for replica, count in theirs.items():
                if isinstance(count, int) and replica in counts:
                    counts[replica] += count
    return counts


def replica_view(endpoint: Endpoint, in_flight: int, now: float) -> dict[str, Any]:
    return {"id": endpoint.id, "replica": endpoint.replica, "state": endpoint.state.value, "in_flight": in_flight,
            "running": endpoint.running, "waiting": endpoint.waiting, "kv_usage": endpoint.kv_usage,
            "scraped": endpoint.scraped_at > 0, "restarts": endpoint.restarts, "detail": endpoint.detail,
            "ejected": endpoint.ejected_until > now, "pid": endpoint.pid, "role": endpoint.role}


def model_view(gateway: Gateway, model: AnyModel, window: ModelWindow, in_flight: dict[str, int]) -> dict[str, Any]:
    name = model.name
    view = gateway.fleet.get(name, {})
    replicas = gateway.table.of(name)
    states: dict[str, int] = {}
    for endpoint in replicas:
        states[endpoint.state.value] = states.get(endpoint.state.value, 0) + 1
    pool = gateway.spec.pool_of(name)
    queue = gateway.queues.get(name)
    now = time.monotonic()
    return {
        "name": name, "engine": model.engine, "task": gateway.engines[name].task(model).value,
        "strategy": view.get("strategy", "fixed"), "desired": view.get("desired", model.min_replicas),
        "min": model.min_replicas, "max": model.max_replicas, "pool": pool.name if pool is not None else None,
        "ready": states.get(ReplicaState.READY.value, 0), "states": states,
        "queued": (queue.waiting if queue is not None else 0) + gateway.holding.get(name, 0),  # this worker's
        "decisions": view.get("events", {}),
        "slo": model.slo.model_dump() if model.slo is not None else None,
        "replicas": [replica_view(e, in_flight.get(e.id, 0), now) for e in sorted(replicas, key=lambda e: e.replica)],
        "recent": window.summary(),
    }


def pool_views(spec: YardSpec, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each pool's residency: which members are awake (ready or waking), asleep, or not running."""
    by_name = {m["name"]: m for m in models}
    pools = []
    for pool in spec.pools:
        members = []
        for member in pool.members:
            states = by_name.get(member, {}).get("states", {})
            awake = states.get("ready", 0) + states.get("waking", 0) + states.get("starting", 0)
            residency = "awake" if awake else "asleep" if states.get("asleep") else "stopped"
            members.append({"name": member, "residency": residency, "pinned": member in pool.pinned})
        pools.append({"name": pool.name, "slots": pool.slots, "memory_gib": pool.memory_gib, "members": members,
                      "awake": sum(1 for m in members if m["residency"] == "awake")})
    return pools


def key_view(key: KeyRecord, usage: UsageRow | None, now: float) -> dict[str, Any]:
    """How close a key is to each of its limits, as a fraction (None: no such limit)."""
    requests = usage.requests if usage is not None else 0
    tokens = usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
    fractions = {"rpm": requests / key.rpm if key.rpm else None, "tpm": tokens / key.tpm if key.tpm else None,
                 "budget": key.used_tokens / key.budget_tokens if key.budget_tokens else None}
    expires_in = key.expires_at - now if key.expires_at is not None else None
    worst = max((f for f in fractions.values() if f is not None), default=0.0)
    return {"name": key.name, "rpm": key.rpm, "tpm": key.tpm, "budget_tokens": key.budget_tokens,
            "used_tokens": key.used_tokens, "requests_last_min": requests, "tokens_last_min": tokens,
            "fractions": fractions, "worst": worst, "expires_in_s": expires_in,
            "near": worst >= NEAR or (expires_in is not None and expires_in < EXPIRING_S)}


async def key_views(store: Store | None, now: float) -> list[dict[str, Any]]:
    """The store's keys that have a limit, a budget or an expiry, the nearest to one first."""
    if store is None:
        return []
    keys = [k for k in await store.list_keys()
            if k.revoked_at is None and (k.rpm or k.tpm or k.budget_tokens or k.expires_at is not None)]
    if not keys:
        return []
    usage = {row.group: row for row in await store.usage_report("key", now - RATE_WINDOW_S)}
    views = [key_view(k, usage.get(k.name), now) for k in keys]
    views.sort(key=lambda v: (not v["near"], -v["worst"], v["name"]))
    return views[:MAX_KEYS]


def cluster_state(gateway: Gateway, keys: list[dict[str, Any]]) -> dict[str, Any]:
    now = time.perf_counter()
    others = gateway.recent.others()
    windows = gateway.recent.window(now, others)
    in_flight = in_flight_by_replica(gateway, others)
    index = int(now // BUCKET_S)
    models = [model_view(gateway, m, windows.get(m.name) or ModelWindow(index), in_flight) for m in gateway.spec.models]
    ok = all(m["ready"] > 0 or m["desired"] == 0 for m in models)
    return {"status": "ok" if ok else "degraded", "version": __version__, "time": time.time(),
            "workers": gateway.workers, "bucket_s": BUCKET_S, "buckets": BUCKETS, "rate_window_s": RATE_WINDOW_S,
            "models": models, "pools": pool_views(gateway.spec, models), "keys": keys}
