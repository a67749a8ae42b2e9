from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class ReplicaState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"  # takes no new requests; finishes its streams, then sleeps or stops
    ASLEEP = "asleep"  # the engine's sleep mode: accelerator memory freed, woken in seconds
    WAKING = "waking"
    UNHEALTHY = "unhealthy"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


MAX_EJECTED_SHARE = 0.5  # of a model's ready replicas, ejected at once (Envoy's max_ejection_percent); never the last


@dataclass(slots=True)  # slots: routing reads a few fields of every replica for every request
class Endpoint:
    """One replica of one model, as the router sees it."""

    model: str
    replica: int
    url: str
    state: ReplicaState = ReplicaState.STARTING
    in_flight: int = 0
    restarts: int = 0
    pid: int | None = None
    detail: str = ""
    upstream_model: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0  # time.monotonic(); passive outlier ejection (gateway/failover.py)
    # the engine's own view, scraped from its /metrics (routing/scrape.py); scraped_at 0.0: never scraped
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    kv_blocks: int | None = None  # KV cache capacity in tokens' blocks x block_size, when the engine says
    kv_block_size: int | None = None
    scraped_at: float = 0.0  # time.monotonic()
    in_flight_at_scrape: int = 0
    watchdog_s: float = 0.0  # the last watchdog probe's seconds (fleet/replica.py); -1: it failed; 0: none yet
    # what the engine says it holds (engines/base.py KVEvents, set for each start): its KV events' PUB and replay
    # addresses, their topic, the seed of its block hash chain; and where it tokenizes a prompt
    kv_events: str | None = None
    kv_replay: str | None = None
    kv_topic: str = ""
    kv_hash_seed: str | None = None
    tokenize_path: str | None = None
    # bumped where the replica may have lost what it held while its addresses stayed (a pod seen not ready again:
    # its container may have restarted in place); a KV-event subscription follows one epoch (routing/kv_events.py)
    kv_epoch: int = 0
    # its role in a disaggregated model (spec/roles.py): "prefill" or "decode"; None: it serves whole requests
    role: str | None = None

    @property
    def kv_tokens(self) -> int | None:
        """The engine's KV cache capacity in tokens, when it exports it (vLLM's cache_config_info)."""
        if self.kv_blocks is None:
            return None
        return self.kv_blocks * (self.kv_block_size or 16)

    @property
    def ready(self) -> bool:
        return self.state is ReplicaState.READY

    def routable(self, now: float) -> bool:
        return self.state is ReplicaState.READY and self.ejected_until <= now

    def waiting_now(self) -> int:
        """The engine's waiting queue, freshened: while it queues, each request sent since the scrape queues too,
        and each one finished since lets one in."""
        if self.waiting <= 0:
            return 0
        return max(0, self.waiting + self.in_flight - self.in_flight_at_scrape)

    @property
    def id(self) -> str:
        return f"{self.model}/{self.replica}"


class EndpointTable:
    """The replicas of every model; written by the fleet, read by the router."""

    def __init__(self) -> None:
        self._by_model: dict[str, list[Endpoint]] = {}

    def add(self, endpoint: Endpoint) -> None:
        self._by_model.setdefault(endpoint.model, []).append(endpoint)

    def remove(self, endpoint: Endpoint) -> None:
        replicas = self._by_model.get(endpoint.model, [])
        if endpoint in replicas:
            replicas.remove(endpoint)

    def of(self, model: str) -> list[Endpoint]:
        return self._by_model.get(model, [])

    def ready(self, model: str) -> list[Endpoint]:
        return [e for e in self._by_model.get(model, []) if e.ready]

    def __iter__(self) -> Iterator[Endpoint]:
        for replicas in self._by_model.values():
            yield from replicas


def may_eject(endpoint: Endpoint, peers: Sequence[Endpoint], now: float, share: float = MAX_EJECTED_SHARE) -> bool:
    """Whether `endpoint` may be (or stay) ejected with the other ejections among its model's ready `peers`: the
    gateway's detector asks before it ejects (gateway/failover.py), the parent before it adopts a worker's ejection
    and a worker before it keeps its own (routing/feed.py), so that the cap holds across workers too."""
    ready = [e for e in peers if e.ready]
    ejected = sum(1 for e in ready if e.ejected_until > now and e is not endpoint)
    return ejected < min(len(ready) - 1, int(len(ready) * share))
