"""Ordered schema migrations, the same schema for SQLite and PostgreSQL.

`schema_version` holds one row per applied step. A backend applies, in one transaction each and under a lock
(SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), every step whose version is above the highest one
recorded. A new step is appended to STEPS with the next version; a released step is never edited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Dialect = Literal["sqlite", "postgres"]

SCHEMA_VERSION_DDL = ("CREATE TABLE IF NOT EXISTS schema_version "
                      "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")


@dataclass(frozen=True)
class Step:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]

    def statements(self, dialect: Dialect) -> tuple[str, ...]:
        return self.sqlite if dialect == "sqlite" else self.postgres


_KEYS = ("CREATE TABLE keys (name TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, models TEXT NOT NULL, "
         "rpm INTEGER NOT NULL DEFAULT 0, tpm BIGINT NOT NULL DEFAULT 0, max_concurrency INTEGER NOT NULL DEFAULT 0, "
         "budget_tokens BIGINT NOT NULL DEFAULT 0, used_tokens BIGINT NOT NULL DEFAULT 0, "
         "priority TEXT NOT NULL DEFAULT 'interactive', expires_at DOUBLE PRECISION, revoked_at DOUBLE PRECISION, "
         "created_at DOUBLE PRECISION NOT NULL)")
_USAGE_COLUMNS = ("ts DOUBLE PRECISION NOT NULL, key_name TEXT NOT NULL, model TEXT NOT NULL, "
                  "replica TEXT NOT NULL DEFAULT '', prompt_tokens INTEGER NOT NULL DEFAULT 0, "
                  "completion_tokens INTEGER NOT NULL DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0, "
                  "ttft_s DOUBLE PRECISION, e2e_s DOUBLE PRECISION NOT NULL DEFAULT 0, status INTEGER NOT NULL, "
                  "error TEXT")
_USAGE_INDEXES = ("CREATE INDEX usage_ts ON usage (ts)", "CREATE INDEX usage_key_ts ON usage (key_name, ts)")

STEPS: tuple[Step, ...] = (
    Step(1, "keys and usage",
         sqlite=(_KEYS, f"CREATE TABLE usage (id INTEGER PRIMARY KEY AUTOINCREMENT, {_USAGE_COLUMNS})",
                 *_USAGE_INDEXES),
         postgres=(_KEYS, f"CREATE TABLE usage (id BIGSERIAL PRIMARY KEY, {_USAGE_COLUMNS})", *_USAGE_INDEXES)),
    Step(2, "prompt and completion text, for models whose config opts in (store_text: true)",
         sqlite=("ALTER TABLE usage ADD COLUMN prompt_text TEXT", "ALTER TABLE usage ADD COLUMN completion_text TEXT"),
         postgres=("ALTER TABLE usage ADD COLUMN prompt_text TEXT",
                   "ALTER TABLE usage ADD COLUMN completion_text TEXT")),
)

_REVISIONS = ("id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, author TEXT NOT NULL, message TEXT NOT NULL, "
              "spec TEXT NOT NULL, state TEXT NOT NULL, gate TEXT NOT NULL DEFAULT ''")
STEPS += (
    Step(3, "revisions: every yard.yaml run or applied",
         sqlite=(f"CREATE TABLE revisions (seq INTEGER PRIMARY KEY AUTOINCREMENT, {_REVISIONS})",),
         postgres=(f"CREATE TABLE revisions (seq BIGSERIAL PRIMARY KEY, {_REVISIONS})",)),
)

STEPS += (
    Step(4, "the request id of each usage row (x-request-id: the same in the gateway's log and the engine's)",
         sqlite=("ALTER TABLE usage ADD COLUMN request_id TEXT",),
         postgres=("ALTER TABLE usage ADD COLUMN request_id TEXT",)),
)

STEPS += (
    Step(5, "estimated usage rows: charged by the gateway's count, the engine having reported no usage",
         sqlite=("ALTER TABLE usage ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0",),
         postgres=("ALTER TABLE usage ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0",)),
)

LATEST = STEPS[-1].version


def pending(current: int) -> list[Step]:
    """The steps to apply, in order, to a database at version `current`."""
    return [step for step in STEPS if step.version > current]
