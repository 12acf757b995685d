"""The tables both SQL backends create (column types filled in per database), and the
``draft_tally`` table of every provisioned tally database.

Times are seconds since the epoch (``{real}``); ``seq`` is ``{seq}``. Each backend adds its own
triggers that make ``audit_log`` append-only and ``audit_head`` forward-only.
"""

from __future__ import annotations

from typing import Any, Final

from taleus_bootstrap import Tally
from taleus_bootstrap._frames import format_utc

__all__ = [
    "DRAFT_TALLY_SELECT",
    "audit_tables",
    "control_tables",
    "draft_tally_row",
    "draft_tally_table",
    "tally_from_row",
]

_CONTROL: Final = """
CREATE TABLE IF NOT EXISTS tokens (
    digest TEXT PRIMARY KEY,
    inviter_role TEXT NOT NULL CHECK (inviter_role IN ('stock', 'foil')),
    created_at {real} NOT NULL,
    expires_at {real},
    max_uses INTEGER CHECK (max_uses IS NULL OR max_uses >= 1),
    max_in_flight INTEGER CHECK (max_in_flight IS NULL OR max_in_flight >= 1),
    identity_requirements TEXT,
    label TEXT,
    used INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reservations (
    token_digest TEXT NOT NULL REFERENCES tokens (digest),
    session_id TEXT NOT NULL,
    peer_id TEXT NOT NULL,
    reserved_at {real} NOT NULL,
    lease_expires_at {real} NOT NULL,
    PRIMARY KEY (token_digest, session_id)
);
CREATE INDEX IF NOT EXISTS reservations_session ON reservations (session_id);
CREATE TABLE IF NOT EXISTS redemptions (
    token_digest TEXT NOT NULL REFERENCES tokens (digest),
    session_id TEXT NOT NULL,
    peer_id TEXT NOT NULL,
    redeemed_at {real} NOT NULL,
    PRIMARY KEY (token_digest, session_id)
);
CREATE TABLE IF NOT EXISTS provisions (
    tally_id TEXT NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('local', 'remote')),
    state TEXT NOT NULL CHECK (state IN ('pending', 'committed', 'released', 'swept')),
    session_id TEXT NOT NULL,
    provision TEXT NOT NULL,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    PRIMARY KEY (tally_id, origin)
);
CREATE INDEX IF NOT EXISTS provisions_state ON provisions (state, created_at);
CREATE INDEX IF NOT EXISTS provisions_session ON provisions (session_id);
"""

_AUDIT: Final = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq {seq} PRIMARY KEY,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    event TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_session ON audit_log (session_id, seq);
CREATE INDEX IF NOT EXISTS audit_log_awaiting_decision ON audit_log (session_id)
    WHERE kind = 'awaiting_decision';
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq {seq} NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '{genesis}') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS open_sessions (
    session_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    side TEXT NOT NULL,
    started_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS open_sessions_owner ON open_sessions (owner);
"""


def control_tables(real: str) -> str:
    """DDL of tokens, reservations, redemptions and provisions (idempotent)."""
    return _CONTROL.replace("{real}", real)


def audit_tables(real: str, seq: str, genesis: str) -> str:
    """DDL of audit_log and audit_head (with the genesis head row), and open_sessions: the
    sessions whose ``session_started`` is logged and ``session_outcome`` not yet (idempotent)."""
    return _AUDIT.replace("{real}", real).replace("{seq}", seq).replace("{genesis}", genesis)


_DRAFT_TALLY_COLUMNS: Final = (
    "tally_id",
    "provisioner_role",
    "stock_party_id",
    "foil_party_id",
    "created_at",
)
DRAFT_TALLY_SELECT: Final = f"SELECT {', '.join(_DRAFT_TALLY_COLUMNS)} FROM draft_tally"
"""Reads the draft tally of a tally database (one row)."""


def draft_tally_table(name: str) -> str:
    """DDL of the draft-tally table called ``name`` (created-at as RFC 3339 text)."""
    return (
        f"CREATE TABLE {name} (tally_id TEXT PRIMARY KEY,"
        " provisioner_role TEXT NOT NULL CHECK (provisioner_role IN ('stock', 'foil')),"
        " stock_party_id TEXT NOT NULL, foil_party_id TEXT NOT NULL, created_at TEXT NOT NULL)"
    )


def draft_tally_row(tally: Tally) -> tuple[str, str, str, str, str]:
    """The row holding ``tally``, in column order."""
    return (
        tally.tally_id,
        tally.provisioner_role,
        tally.stock_party_id,
        tally.foil_party_id,
        format_utc(tally.created_at),
    )


def tally_from_row(row: Any) -> Tally | None:
    """The tally a :data:`DRAFT_TALLY_SELECT` row holds (None for no row)."""
    if row is None:
        return None
    return Tally.model_validate(dict(zip(_DRAFT_TALLY_COLUMNS, row, strict=True)))
