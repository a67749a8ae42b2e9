"""Per-key limits: requests per minute, tokens per minute, concurrent requests, token budget.

Per request, after `check_key` (modelyard.store.base) accepted the key::

    result = await limiter.admit(key, reserve_tokens)     # reserve = max_tokens (+ a prompt estimate)
    if isinstance(result, Rejection):
        return openai_error(429, result.message, result.code, headers={"Retry-After": str(result.retry_after_s)})
    try:
        ...relay...
    finally:
        await limiter.settle(result, real_tokens)          # prompt + completion tokens; 0 if nothing was served

and the usage writer's `on_flushed` is wired to `limiter.commit_budget`, so tokens settled but not yet written
to the store still count against the budget (see UsageWriter).

Windows are sliding and exact: a key with rpm=60 gets at most 60 admissions in any 60 s. TPM counts each
admitted request's reservation until `settle` replaces it with the real count. Concurrency counts admissions
not yet settled (with Redis, as leases that expire after `lease_s`, so a crashed gateway does not hold slots
forever). The budget check is `used_tokens (from the store) + tokens settled or reserved but not yet in the
store + reserve <= budget_tokens`.

`LocalLimiter` is exact within one process (its checks never await). `RedisLimiter` makes every gateway
instance that shares one Redis enforce one key's limits as one: each admit/settle is one Lua script, which
Redis runs atomically, timed by Redis's own clock.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelyard.gateway.script_pipe import ScriptPipe
from modelyard.store.base import KeyRecord

WINDOW_S = 60.0
CONCURRENCY_RETRY_S = 1
BUDGET_RETRY_S = 3600
MESSAGES = {
    "rpm": ("rate_limit_exceeded", "This API key's requests-per-minute limit is reached"),
    "tpm": ("rate_limit_exceeded", "This API key's tokens-per-minute limit is reached"),
    "concurrency": ("concurrency_limit_exceeded", "This API key has too many requests in flight"),
    "budget": ("budget_exceeded", "This API key has used its token budget"),
}


@dataclass
class Admission:
    """A request let through; hand it back to `settle` exactly once (further calls do nothing)."""

    key_name: str
    reserved: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    settled: bool = False


@dataclass(frozen=True)
class Rejection:
    """Answer 429 with `Retry-After: retry_after_s`."""

    reason: str  # rpm | tpm | concurrency | budget
    retry_after_s: int

    @property
    def code(self) -> str:
        return MESSAGES[self.reason][0]

    @property
    def message(self) -> str:
        return MESSAGES[self.reason][1]


class Limiter(Protocol):
    async def admit(self, key: KeyRecord, reserve_tokens: int) -> Admission | Rejection: ...

    async def settle(self, admission: Admission, real_tokens: int) -> None: ...

    async def commit_budget(self, totals: Mapping[str, int]) -> None:
        """Tokens that the usage writer has now added to the store's used_tokens."""
        ...


def _retry(seconds: float) -> int:
    return max(1, math.ceil(seconds))


@dataclass
class _Entry:
    ts: float
    id: str
    tokens: int


@dataclass
class _KeyState:
    window: deque[_Entry] = field(default_factory=deque)
    by_id: dict[str, _Entry] = field(default_factory=dict)
    tokens: int = 0
    in_flight: set[str] = field(default_factory=set)
    pending: int = 0

    def trim(self, now: float) -> None:
        while self.window and self.window[0].ts <= now - WINDOW_S:
            entry = self.window.popleft()
            del self.by_id[entry.id]
            self.tokens -= entry.tokens

    def idle(self) -> bool:
        return not self.window and not self.in_flight and self.pending <= 0


class LocalLimiter:
    """Exact limits for one gateway process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._ids = itertools.count()

    async def admit(self, key: KeyRecord, reserve_tokens: int) -> Admission | Rejection:
        now = self._clock()
        state = self._keys.setdefault(key.name, _KeyState())
        state.trim(now)
        rejection = self._check(state, key, reserve_tokens, now)
        if rejection is not None:
            if state.idle():
                del self._keys[key.name]
            return rejection
        admission = Admission(key.name, reserve_tokens, id=str(next(self._ids)))  # unique in this process
        entry = _Entry(now, admission.id, reserve_tokens)
        state.window.append(entry)
        state.by_id[entry.id] = entry
        state.tokens += reserve_tokens
        state.in_flight.add(admission.id)
        state.pending += reserve_tokens
        return admission

    @staticmethod
    def _check(state: _KeyState, key: KeyRecord, reserve: int, now: float) -> Rejection | None:
        if key.rpm and len(state.window) >= key.rpm:
            return Rejection("rpm", _retry(state.window[0].ts + WINDOW_S - now))
        if key.tpm and state.tokens + reserve > key.tpm:
            if reserve > key.tpm:
                return Rejection("tpm", _retry(WINDOW_S))
            freed = 0
            for entry in state.window:
                freed += entry.tokens
                if state.tokens - freed + reserve <= key.tpm:
                    return Rejection("tpm", _retry(entry.ts + WINDOW_S - now))
            return Rejection("tpm", _retry(WINDOW_S))
        if key.max_concurrency and len(state.in_flight) >= key.max_concurrency:
            return Rejection("concurrency", CONCURRENCY_RETRY_S)
        if key.budget_tokens and key.used_tokens + state.pending + reserve > key.budget_tokens:
            return Rejection("budget", BUDGET_RETRY_S)
        return None

    async def settle(self, admission: Admission, real_tokens: int) -> None:
        self.settle_now(admission, real_tokens)

    def settle_now(self, admission: Admission, real_tokens: int) -> None:
        """`settle` without an await: the relay's end calls it directly (no task per request)."""
        if admission.settled:
            return
        admission.settled = True
        state = self._keys.get(admission.key_name)
        if state is None:
            return
        entry = state.by_id.get(admission.id)
        if entry is not None:
            state.tokens += real_tokens - entry.tokens
            entry.tokens = real_tokens
        state.in_flight.discard(admission.id)
        state.pending = max(0, state.pending + real_tokens - admission.reserved)

    async def commit_budget(self, totals: Mapping[str, int]) -> None:
        for name, tokens in totals.items():
            state = self._keys.get(name)
            if state is not None:
                state.pending = max(0, state.pending - tokens)

    def in_flight(self, name: str) -> int:
        state = self._keys.get(name)
        return len(state.in_flight) if state else 0


ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, reserve = ARGV[1], tonumber(ARGV[2])
local rpm, tpm, maxc = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local budget, used = tonumber(ARGV[6]), tonumber(ARGV[7])
local lease, window, pend_ttl = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #old > 0 then
  local freed = 0
  for _, m in ipairs(old) do
    freed = freed + (tonumber(redis.call('HGET', KEYS[2], m)) or 0)
    redis.call('HDEL', KEYS[2], m)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('DECRBY', KEYS[3], freed)
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
if rpm > 0 and redis.call('ZCARD', KEYS[1]) >= rpm then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, 'rpm', tonumber(first[2]) + window - now}
end
local tsum = tonumber(redis.call('GET', KEYS[3]) or '0')
if tpm > 0 and tsum + reserve > tpm then
  if reserve > tpm then return {0, 'tpm', window} end
  local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  local freed = 0
  for i = 1, #entries, 2 do
    freed = freed + (tonumber(redis.call('HGET', KEYS[2], entries[i])) or 0)
    if tsum - freed + reserve <= tpm then return {0, 'tpm', tonumber(entries[i + 1]) + window - now} end
  end
  return {0, 'tpm', window}
end
if maxc > 0 and redis.call('ZCARD', KEYS[4]) >= maxc then return {0, 'concurrency', 1000} end
local pend = tonumber(redis.call('GET', KEYS[5]) or '0')
if budget > 0 and used + pend + reserve > budget then return {0, 'budget', 3600000} end
redis.call('ZADD', KEYS[1], now, id)
redis.call('HSET', KEYS[2], id, reserve)
redis.call('INCRBY', KEYS[3], reserve)
redis.call('ZADD', KEYS[4], now + lease, id)
redis.call('INCRBY', KEYS[5], reserve)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], window * 2) end
redis.call('PEXPIRE', KEYS[4], lease * 2)
redis.call('PEXPIRE', KEYS[5], pend_ttl)
return {1, '', 0}
"""

SETTLE_LUA = """
local id, reserve, real = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cur = redis.call('HGET', KEYS[2], id)
if cur then
  redis.call('HSET', KEYS[2], id, real)
  redis.call('INCRBY', KEYS[3], real - tonumber(cur))
end
redis.call('ZREM', KEYS[4], id)
if redis.call('INCRBY', KEYS[5], real - reserve) < 0 then redis.call('SET', KEYS[5], 0) end
return 1
"""

COMMIT_LUA = """
if redis.call('DECRBY', KEYS[1], tonumber(ARGV[1])) < 0 then redis.call('SET', KEYS[1], 0) end
return 1
"""


class RedisLimiter:
    """Limits shared by every gateway instance on one Redis (redis.asyncio.Redis, decode_responses or not)."""

    def __init__(self, redis: Any, prefix: str = "modelyard:limits", lease_s: float = 900.0,
                 pending_ttl_s: float = 600.0) -> None:
        self._redis, self._prefix = redis, prefix
        self._lease_ms, self._pending_ttl_ms = int(lease_s * 1000), int(pending_ttl_s * 1000)
        self._names: dict[str, list[str]] = {}
        self._admit = redis.register_script(ADMIT_LUA)
        self._settle = redis.register_script(SETTLE_LUA)
        self._commit = redis.register_script(COMMIT_LUA)
        self._pipe = ScriptPipe(redis)  # the admissions and settlements of one loop turn: one round trip

    def _keys(self, name: str) -> list[str]:
        keys = self._names.get(name)
        if keys is None:  # made once per key name
            # the name is hashed: any text is a safe Redis key, and {tag} keeps one key's data in one cluster slot
            tag = hashlib.sha256(name.encode()).hexdigest()[:32]
            base = f"{self._prefix}:{{{tag}}}"
            keys = self._names[name] = [f"{base}:req", f"{base}:tok", f"{base}:tsum", f"{base}:conc", f"{base}:pend"]
        return keys

    async def admit(self, key: KeyRecord, reserve_tokens: int) -> Admission | Rejection:
        if not (key.rpm or key.tpm or key.max_concurrency or key.budget_tokens):
            return Admission(key.name, reserve_tokens, settled=True)  # nothing to count: no round trip
        admission = Admission(key.name, reserve_tokens)
        args = [admission.id, reserve_tokens, key.rpm, key.tpm, key.max_concurrency, key.budget_tokens,
                key.used_tokens, self._lease_ms, int(WINDOW_S * 1000), self._pending_ttl_ms]
        ok, reason, retry_ms = await self._pipe.call(self._admit, self._keys(key.name), args)
        if int(ok):
            return admission
        text = reason.decode() if isinstance(reason, bytes) else str(reason)
        return Rejection(text, _retry(int(retry_ms) / 1000))

    async def settle(self, admission: Admission, real_tokens: int) -> None:
        if admission.settled:
            return
        admission.settled = True
        await self._pipe.call(self._settle, self._keys(admission.key_name),
                              [admission.id, admission.reserved, real_tokens])

    async def commit_budget(self, totals: Mapping[str, int]) -> None:
        for name, tokens in totals.items():
            await self._commit(keys=[self._keys(name)[4]], args=[tokens])
