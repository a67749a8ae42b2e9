"""Revisions: every yard.yaml that `up` ran or `apply` applied, kept beside keys and usage (the same schema in
SQLite and PostgreSQL: migration step 3). A revision's `id` is its content's hash (the same file is the same id);
`seq` orders them. States: serving (the one `up` runs now), superseded (served before), refused (its gate failed,
or its apply did), rolled-back-from is not a state: a rollback applies an older revision again, as a new row."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

REVISION_COLUMNS = "seq, id, created_at, author, message, spec, state, gate"
STATES = ("serving", "superseded", "refused")


def revision_id(spec_text: str) -> str:
    return hashlib.sha256(spec_text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Revision:
    seq: int
    id: str
    created_at: float
    author: str
    message: str
    spec: str  # the yard.yaml's text, as applied
    state: str
    gate: str  # the gate's report as JSON, "" when none ran


def revision_from_row(row: Sequence[object]) -> Revision:
    seq, rid, created, author, message, spec, state, gate = row
    return Revision(int(str(seq)), str(rid), float(str(created)), str(author), str(message), str(spec), str(state),
                    str(gate or ""))
