"""Who is calling and may they, now: key lookup, per-key limits, the per-model admission queue.

Keys come from two places: the static ring (yard.yaml's keys, $MODELYARD_API_KEY, the generated key), which
have no limits, and the store (`modelyard keys create ...`), looked up by the sha256 of the secret, so a
revocation takes effect on the next request on every gateway instance. With a store that says when anything in
it changed (SQLite's data_version, one cheap synchronous call), known keys are kept in memory until the next
change, from any process; otherwise (PostgreSQL) each request asks the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from starlette.responses import Response

from modelyard.gateway.admission import AdmissionQueue, QueueRejection, Slot
from modelyard.gateway.auth import KeyRing, Twice, bearer, hash_key
from modelyard.gateway.errors import openai_error
from modelyard.gateway.limits import Admission, Limiter, Rejection
from modelyard.gateway.scope import admit_shielded
from modelyard.gateway.tokens import PromptEstimates, Reservation
from modelyard.observability.metrics import GatewayMetrics
from modelyard.store.base import KeyRecord, Store, check_key, check_live

log = logging.getLogger("modelyard.gateway")
MAX_CACHED_KEYS = 10_000


@dataclass
class Ticket:
    """A request admitted by its key's limits and its model's queue; `done` gives both back once."""

    key: KeyRecord
    admission: Admission
    slot: Slot
    limiter: Limiter
    reservation: Reservation | None = None  # what was reserved: the charge of an answer without usage
    released: bool = False

    async def done(self, real_tokens: int) -> None:
        settling = self.finish(real_tokens)
        if settling is not None:
            await settling

    def finish(self, real_tokens: int) -> Coroutine[Any, Any, None] | None:
        """Gives the slot back now, and settles at once with a limiter that never waits (LocalLimiter.settle_now);
        else returns the settling to await (Redis), or None when there is nothing left to do."""
        if self.released:
            return None
        self.released = True
        self.slot.release()
        if self.admission.settled:  # a key without limits: the limiter counted nothing (RedisLimiter.admit)
            return None
        settle_now = getattr(self.limiter, "settle_now", None)
        if settle_now is not None:
            settle_now(self.admission, real_tokens)
            return None
        return self._settle(real_tokens)

    async def _settle(self, real_tokens: int) -> None:
        try:
            await self.limiter.settle(self.admission, real_tokens)
        except Exception as exc:  # with Redis, its leases expire on their own
            log.error("limiter settle failed: %s: %s", type(exc).__name__, exc)


def refuse_twice() -> Response:
    """The answer to a request with several Authorization headers, on every route."""
    return openai_error(400, "send one Authorization header, not several", "duplicate_header", "authorization")


class KeyCache:
    """The store's keys by hash, exact: emptied whenever the store's version changes (a write by anyone).

    The version is read once per event-loop turn, however many requests that turn starts: a write is seen by the
    requests of the next turn. A miss reads the key synchronously on the store's read-only connection when it can
    (SQLite: a few microseconds, never behind the store's thread, which may be busy writing usage), else asks the
    store, one lookup per key however many requests miss at once. A store without `data_version()` is asked on
    every lookup. Unknown hashes are not remembered (random keys cannot fill the memory), and the cache never holds
    more than `MAX_CACHED_KEYS`.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.version: Callable[[], int] | None = getattr(store, "data_version", None)
        self.lookup_now: Callable[[str], KeyRecord | None] | None = getattr(store, "lookup_key_now", None)
        self._seen = -1
        self._turn: int | None = None  # the version read in this loop turn
        self._keys: dict[str, KeyRecord] = {}
        self._asking: dict[str, tuple[int, asyncio.Future[KeyRecord | None]]] = {}  # lookups in flight

    def _version(self, version: Callable[[], int]) -> int:
        if self._turn is None:
            self._turn = version()
            asyncio.get_running_loop().call_soon(self._next_turn)
        return self._turn

    def _next_turn(self) -> None:
        self._turn = None

    async def lookup(self, digest: str) -> KeyRecord | None:
        if self.version is None:
            return await self.store.lookup_key(digest)
        try:
            version = self._version(self.version)
        except Exception:  # the store cannot say now (SQLite busy): ask it, and remember nothing
            self._seen = -1
            self._keys.clear()
            return await self.store.lookup_key(digest)
        if version != self._seen:
            self._keys.clear()
            self._seen = version
        else:
            key = self._keys.get(digest)
            if key is not None:
                return key
        now = self._read_now(digest)
        key = await self._ask(digest, version) if now is False else now
        # read at `version` or later: a change since then has moved the version, and empties the cache next time
        if key is not None and self._seen == version:
            if len(self._keys) >= MAX_CACHED_KEYS:
                self._keys.clear()
            self._keys[digest] = key
        return key

    def _read_now(self, digest: str) -> KeyRecord | None | Literal[False]:
        """The key read at once, or False when it cannot be (no such read, or the database is busy)."""
        if self.lookup_now is None:
            return False
        try:
            return self.lookup_now(digest)
        except Exception:
            return False

    async def _ask(self, digest: str, version: int) -> KeyRecord | None:
        """One store lookup per key and version however many requests miss at once (after each write)."""
        asking = self._asking.get(digest)
        if asking is not None and asking[0] == version:  # started at this version: as fresh as a new one
            return await asyncio.shield(asking[1])
        future = asyncio.ensure_future(self.store.lookup_key(digest))
        self._asking[digest] = (version, future)
        try:
            return await asyncio.shield(future)
        finally:
            if self._asking.get(digest, (0, None))[1] is future:
                del self._asking[digest]


class Tenancy:
    def __init__(self, ring: KeyRing, store: Store | None, limiter: Limiter, queues: dict[str, AdmissionQueue],
                 metrics: GatewayMetrics) -> None:
        self.ring, self.store, self.limiter, self.queues, self.metrics = ring, store, limiter, queues, metrics
        self.keys = KeyCache(store) if store is not None else None
        self.prompts = PromptEstimates()  # learned from the engines' usage (Gateway.record)

    async def identify(self, authorization: str | Twice | None) -> KeyRecord | Response:
        """The key of a request that may make requests now (known, not revoked, not expired), or the answer that
        says why not: every route that takes an API key (`/v1/*`) asks this, so a revocation holds everywhere from
        the next request; which model it may use is `admit`'s (`check_key`)."""
        if isinstance(authorization, Twice):
            return refuse_twice()
        token = bearer(authorization)
        if token is None:
            message = ("Missing API key: send 'Authorization: Bearer <key>'" if not authorization
                       else "Malformed Authorization header: use 'Bearer <key>'")
            return openai_error(401, message, "invalid_api_key")
        digest = hash_key(token)
        principal = self.ring.find(digest)
        if principal is not None:
            return KeyRecord(name=principal.name, key_hash=digest)
        key = await self.keys.lookup(digest) if self.keys is not None else None
        denial = check_live(key)
        if denial is not None:
            return openai_error(denial.status, denial.message, denial.code)
        assert key is not None
        return key

    async def admit(self, key: KeyRecord, model: str, payload: dict[str, object],
                    body_size: int, generates: bool = True, prompt_tokens: int | None = None) -> Ticket | Response:
        denial = check_key(key, model)
        if denial is not None:
            self.metrics.rejections.labels(model, key.name, denial.code).inc()
            return openai_error(denial.status, denial.message, denial.code,
                                headers=dict(denial.headers) if denial.headers else None)
        reservation = self.prompts.reserve(model, payload, body_size, generates, prompt_tokens)
        try:
            asking = self.limiter.admit(key, reservation.total)
            # a limiter that waits (Redis) is not abandoned half-way by a client that leaves; one that never waits
            # (LocalLimiter) cannot be, and costs no task
            result = await (asking if hasattr(self.limiter, "settle_now") else admit_shielded(asking, self._given_back))
        except Exception as exc:  # the shared limiter (Redis) is down: fail closed, clearly
            log.error("limiter unavailable: %s: %s", type(exc).__name__, exc)
            self.metrics.rejections.labels(model, key.name, "limiter_unavailable").inc()
            return openai_error(503, "rate limiting is unavailable; try again shortly", "limiter_unavailable",
                                headers={"Retry-After": "5"})
        if isinstance(result, Rejection):
            self.metrics.rejections.labels(model, key.name, result.reason).inc()
            headers = {"Retry-After": str(result.retry_after_s)}
            if result.reason == "budget":  # not back in the seconds an SDK waits before its own retries
                headers["x-should-retry"] = "false"
            return openai_error(429, result.message, result.code, headers=headers)
        try:
            slot = await self.queues[model].acquire(key.priority)
        except asyncio.CancelledError:  # the client left while queued: its key's admission goes back too
            await self._given_back(result)
            raise
        if isinstance(slot, QueueRejection):
            await self._given_back(result)
            self.metrics.rejections.labels(model, key.name, slot.code).inc()
            return openai_error(slot.status, slot.message, slot.code,
                                headers={"Retry-After": str(slot.retry_after_s)})
        return Ticket(key, result, slot, self.limiter, reservation)

    async def _given_back(self, result: Admission | Rejection) -> None:
        """What the limiter granted to a request that goes no further (its client left, or the queue refused it)."""
        if isinstance(result, Admission):
            await self.limiter.settle(result, 0)
