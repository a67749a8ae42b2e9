"""What modelyard keeps: API keys (hashed), usage records, and the `Store` contract both backends implement.

The gateway's hot path makes one call per request, `lookup_key(hash_key(secret))`: one indexed query by the
key's sha256 (no cache, so a revocation, a rotation or a budget bump is seen by the next request on every
gateway instance). `check_key` then says, without I/O, whether that key may call that model now.

Usage is written by `modelyard.gateway.usage.UsageWriter` in batches (`write_usage`), which also adds the
batch's tokens to each key's `used_tokens` in the same transaction.

Every query is parameterized; no value ever becomes part of an SQL string.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import orjson

from modelyard.store.revisions import Revision

Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")
GroupBy = Literal["key", "model"]


class StoreError(Exception):
    """A store operation that cannot be done as asked (a duplicate name, an unknown key)."""


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored: never its secret. Zero for rpm/tpm/max_concurrency/budget_tokens means no limit;
    empty `models` means every model."""

    name: str
    key_hash: str
    models: tuple[str, ...] = ()
    rpm: int = 0
    tpm: int = 0
    max_concurrency: int = 0
    budget_tokens: int = 0
    used_tokens: int = 0
    priority: Priority = "interactive"
    expires_at: float | None = None
    revoked_at: float | None = None
    created_at: float = field(default_factory=time.time)

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models


@dataclass(frozen=True)
class KeyLimits:
    """What `create_key` takes besides the name."""

    models: tuple[str, ...] = ()
    rpm: int = 0
    tpm: int = 0
    max_concurrency: int = 0
    budget_tokens: int = 0
    priority: Priority = "interactive"
    expires_at: float | None = None


MAX_KEY_NAME = 128
MAX_LIMIT = 10**15  # rpm, tpm, concurrency, budget: exact in JSON, SQLite and Redis' Lua (doubles), beyond any use
MAX_LIFETIME_S = 100 * 365 * 86400  # a key's expiry: at most a century away (a date every tool can print)
MAX_KEY_MODELS = 1024


def name_problem(name: object, what: str = "name") -> str | None:
    """What is wrong with a key's (or a key's model's) name, else None: it goes into logs, usage rows, metric
    labels and the terminal, so it is printable (no NUL, newline or other control character), not padded with
    spaces, and at most MAX_KEY_NAME characters."""
    if not isinstance(name, str) or not name or len(name) > MAX_KEY_NAME:
        return f"{what} must be a non-empty string of at most {MAX_KEY_NAME} characters"
    if not name.isprintable() or name != name.strip():
        return f"{what} must be printable characters (no control characters), without leading or trailing spaces"
    return None


def limits_problem(limits: KeyLimits, now: float | None = None) -> str | None:
    """What is out of bounds in a new key's limits, else None (`modelyard keys create` and /admin/keys)."""
    for field_name in ("rpm", "tpm", "max_concurrency", "budget_tokens"):
        if not 0 <= getattr(limits, field_name) <= MAX_LIMIT:
            return f"{field_name} must be an integer from 0 to {MAX_LIMIT}"
    if len(limits.models) > MAX_KEY_MODELS:
        return f"models: at most {MAX_KEY_MODELS}"
    for model in limits.models:
        if (wrong := name_problem(model, "each of models")) is not None:
            return wrong
    now = time.time() if now is None else now
    if limits.expires_at is not None and not now < limits.expires_at <= now + MAX_LIFETIME_S:
        return f"a key expires at most {MAX_LIFETIME_S} seconds (a century) from now, and in the future"
    return None


@dataclass(frozen=True)
class Denial:
    """Why a known key may not make this request: the HTTP status and OpenAI error code to answer with, and the
    headers that go with it."""

    status: int
    code: str
    message: str
    headers: Mapping[str, str] | None = None


# a spent budget does not refill by waiting: the OpenAI SDKs are told not to retry (they would at once, twice), and
# Retry-After says when asking again makes sense at all (an operator may raise the budget; the same as the
# limiter's budget answer, gateway/limits.py's BUDGET_RETRY_S)
BUDGET_SPENT_HEADERS: Mapping[str, str] = {"Retry-After": "3600", "x-should-retry": "false"}


def check_live(key: KeyRecord | None, now: float | None = None) -> Denial | None:
    """None when `key` is a key that may make requests at all now (known, not revoked, not expired); else why not.
    Every route that takes an API key asks this, so a revocation holds everywhere from the next request."""
    if key is None:
        return Denial(401, "invalid_api_key", "Incorrect API key provided")
    now = time.time() if now is None else now
    if key.revoked_at is not None:
        return Denial(401, "invalid_api_key", "This API key has been revoked")
    if key.expires_at is not None and key.expires_at <= now:
        return Denial(401, "invalid_api_key", "This API key has expired")
    return None


def check_key(key: KeyRecord | None, model: str, now: float | None = None) -> Denial | None:
    """None when `key` may call `model` now; else why not. Pure: the gateway calls it after `lookup_key`."""
    denial = check_live(key, now)
    if denial is not None or key is None:
        return denial
    if not key.allows(model):
        return Denial(403, "model_not_allowed", f"This API key may not use the model '{model}'")
    if key.budget_tokens and key.used_tokens >= key.budget_tokens:
        return Denial(429, "budget_exceeded", "This API key has used its token budget", BUDGET_SPENT_HEADERS)
    return None


@dataclass(frozen=True)
class UsageRecord:
    """One finished request. No prompt or completion text unless the model's config opts in."""

    ts: float
    key_name: str
    model: str
    replica: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft_s: float | None = None
    e2e_s: float = 0.0
    status: int = 200
    error: str | None = None
    prompt_text: str | None = None  # only for a model whose config opts in (store_text: true)
    completion_text: str | None = None
    request_id: str | None = None  # x-request-id, as the client sent it or the gateway made it
    estimated: bool = False  # the engine reported no usage: tokens counted by the gateway (gateway/usage.py charge)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class UsageRow:
    """One line of a usage report, grouped by key name or by model."""

    group: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    avg_ttft_s: float | None
    avg_e2e_s: float | None
    estimated: int = 0  # requests whose tokens the gateway counted (the engine reported no usage)


class Store(Protocol):
    async def lookup_key(self, key_hash: str) -> KeyRecord | None: ...

    async def create_key(self, name: str, limits: KeyLimits) -> tuple[KeyRecord, str]:
        """The new key and its secret, which is returned here once and never stored."""
        ...

    async def get_key(self, name: str) -> KeyRecord | None: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def revoke_key(self, name: str) -> KeyRecord: ...

    async def rotate_key(self, name: str) -> tuple[KeyRecord, str]:
        """A new secret for the key; the old one stops working at once."""
        ...

    async def write_usage(self, batch: Sequence[UsageRecord]) -> None:
        """Inserts the records and adds their tokens to their keys' used_tokens, in one transaction."""
        ...

    async def add_used_tokens(self, name: str, tokens: int) -> None: ...

    async def usage_report(self, by: GroupBy, since: float) -> list[UsageRow]: ...

    async def purge_usage(self, before: float) -> int:
        """Deletes usage records older than `before`; returns how many."""
        ...

    async def add_revision(self, spec: str, author: str, message: str, state: str, gate: str = "") -> Revision:
        """A new revision row (the serving one before it becomes superseded when `state` is serving)."""
        ...

    async def list_revisions(self, limit: int = 50) -> list[Revision]:
        """The newest first."""
        ...

    async def get_revision(self, ref: str) -> Revision | None:
        """By its number (`seq`), or by its id or a prefix of it (the newest such)."""
        ...

    async def close(self) -> None: ...


def encode_models(models: Sequence[str]) -> str:
    return orjson.dumps(list(models)).decode()


def decode_models(text: str) -> tuple[str, ...]:
    value = orjson.loads(text)
    return tuple(str(m) for m in value) if isinstance(value, list) else ()


KEY_COLUMNS = ("name, key_hash, models, rpm, tpm, max_concurrency, budget_tokens, used_tokens, priority, "
               "expires_at, revoked_at, created_at")


def key_from_row(row: Sequence[object]) -> KeyRecord:
    """A KeyRecord from a row selected as KEY_COLUMNS."""
    (name, key_hash, models, rpm, tpm, conc, budget, used, priority, expires, revoked, created) = row
    prio: Priority = "batch" if priority == "batch" else "interactive"
    return KeyRecord(name=str(name), key_hash=str(key_hash), models=decode_models(str(models)),
                     rpm=int(rpm), tpm=int(tpm), max_concurrency=int(conc),  # type: ignore[call-overload]
                     budget_tokens=int(budget), used_tokens=int(used), priority=prio,  # type: ignore[call-overload]
                     expires_at=_opt_float(expires), revoked_at=_opt_float(revoked),
                     created_at=float(created))  # type: ignore[arg-type]


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def usage_values(record: UsageRecord) -> tuple[object, ...]:
    return (record.ts, record.key_name, record.model, record.replica, record.prompt_tokens,
            record.completion_tokens, record.cached_tokens, record.ttft_s, record.e2e_s, record.status,
            record.error, record.prompt_text, record.completion_text, record.request_id, int(record.estimated))


USAGE_COLUMNS = ("ts, key_name, model, replica, prompt_tokens, completion_tokens, cached_tokens, ttft_s, e2e_s, "
                 "status, error, prompt_text, completion_text, request_id, estimated")
USAGE_WIDTH = USAGE_COLUMNS.count(",") + 1  # the values of one row (usage_values)


def tokens_by_key(batch: Sequence[UsageRecord]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for record in batch:
        if record.tokens:
            totals[record.key_name] = totals.get(record.key_name, 0) + record.tokens
    return totals


def usage_row(row: Sequence[object]) -> UsageRow:
    group, requests, errors, prompt, completion, cached, ttft, e2e, estimated = row
    return UsageRow(group=str(group), requests=int(requests), errors=int(errors or 0),  # type: ignore[call-overload]
                    prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0),  # type: ignore[call-overload]
                    cached_tokens=int(cached or 0), avg_ttft_s=_opt_float(ttft),  # type: ignore[call-overload]
                    avg_e2e_s=_opt_float(e2e), estimated=int(estimated or 0))  # type: ignore[call-overload]


def report_sql(by: GroupBy, placeholder: str) -> str:
    """The report query; the grouping column comes from a fixed map, never from the caller's text."""
    column = {"key": "key_name", "model": "model"}[by]
    return (f"SELECT {column}, COUNT(*), SUM(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END), "
            f"SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens), AVG(ttft_s), AVG(e2e_s), "
            f"SUM(estimated) "
            f"FROM usage WHERE ts >= {placeholder} GROUP BY {column} ORDER BY {column}")
