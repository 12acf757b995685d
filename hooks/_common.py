"""Pieces shared by the reference backends: token records, the requirements identity policy,
canonical JSON, and the small database-access protocol the SQL backends are written against.

The SQL is written once, with ``?`` placeholders; a backend's cursor adapts the placeholder style
(PostgreSQL's cursor rewrites ``?`` to ``%s``). Every statement runs inside one transaction opened
by :meth:`SqlDatabase.transact`, in a worker thread (never on the event loop).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import JsonValue

from taleus_bootstrap import (
    AuditEvent,
    InviteeHooks,
    RecordedOutcome,
    Role,
    SessionHooks,
    outcome_from_audit,
)
from taleus_bootstrap._lazy import LazyModule

if TYPE_CHECKING:
    import trio
else:  # imported on first use: the store's synchronous uses never need it
    trio = LazyModule("trio")

__all__ = [
    "Clock",
    "Cursor",
    "HookBundle",
    "RequirementsIdentityValidator",
    "SqlDatabase",
    "TokenRecord",
    "canonical_json",
    "in_worker_thread",
    "utc_now",
]

T = TypeVar("T")
Clock = Callable[[], datetime]
"""A wall clock returning aware UTC datetimes (injected so tests control expiry)."""


def utc_now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


CALLER_DEADLINE: ContextVar[float | None] = ContextVar("taleus_caller_deadline", default=None)
"""The deadline (``time.monotonic()``) of the task whose worker thread this is, set by
:func:`in_worker_thread` (``trio.to_thread`` hands the context to the thread): a store whose
calls can wait on a server (PostgreSQL) bounds them by it."""


async def in_worker_thread(fn: Callable[..., T], *args: Any) -> T:
    """``trio.to_thread.run_sync(fn, *args)``, telling the thread the caller's deadline
    (:data:`CALLER_DEADLINE`): a worker thread cannot be abandoned, so the store calls it
    makes must end on time by themselves."""
    left = trio.current_effective_deadline() - trio.current_time()
    token = CALLER_DEADLINE.set(None if left == math.inf else time.monotonic() + left)
    try:
        return await trio.to_thread.run_sync(fn, *args)
    finally:
        CALLER_DEADLINE.reset(token)


def canonical_json(value: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 text, no NaN/infinity."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


@dataclass
class TokenRecord:
    """What a token store keeps of one token (never the token itself)."""

    digest: str
    inviter_role: Role
    expires_at: datetime | None
    max_uses: int | None  # None: unlimited
    identity_requirements: dict[str, JsonValue] | None
    used: int = 0
    revoked: bool = False
    reservations: set[str] = field(default_factory=set)
    max_in_flight: int | None = None  # None: no cap on sessions holding a reservation at once
    label: str | None = None
    created_at: datetime | None = None

    def available(self, now: datetime) -> bool:
        """Whether one more use could be reserved at ``now``."""
        if self.revoked or (self.expires_at is not None and now >= self.expires_at):
            return False
        held = len(self.reservations)
        if self.max_in_flight is not None and held >= self.max_in_flight:
            return False
        return self.max_uses is None or self.used + held < self.max_uses


class HookBundle:
    """Bundles a backend's ``tokens`` / ``database`` / ``identity`` / ``audit`` into hooks."""

    tokens: Any
    database: Any
    identity: Any
    audit: Any

    def hooks(self, **overrides: Any) -> SessionHooks:
        """Inviter hooks, with any of token/database/identity/audit replaced."""
        parts: dict[str, Any] = {
            "token": self.tokens,
            "database": self.database,
            "identity": self.identity,
            "audit": self.audit,
            "outcomes": self,
        }
        parts.update(overrides)
        return SessionHooks(**parts)

    async def recorded_outcome(self, session_id: str, peer_id: str) -> RecordedOutcome:
        """The ``outcomes`` hook (protocol section 14): what this node's audit log recorded for
        ``session_id`` as its inviter, told only to the session's peer (``unknown`` to others)."""
        return outcome_from_audit(await self._session_events(session_id), peer_id)

    async def _session_events(self, session_id: str) -> list[AuditEvent]:
        return list(self.audit.for_session(session_id))

    def invitee_hooks(self, **overrides: Any) -> InviteeHooks:
        """Invitee hooks (database and audit), with either replaced."""
        parts: dict[str, Any] = {"database": self.database, "audit": self.audit}
        parts.update(overrides)
        return InviteeHooks(**parts)


def check_mint_arguments(uses: int | None, max_in_flight: int | None) -> None:
    """Refuse nonsensical mint arguments (shared by every store)."""
    if uses is not None and uses < 1:
        raise ValueError("uses must be at least 1 (or None for unlimited)")
    if max_in_flight is not None and max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1 (or None for no cap)")


class RequirementsIdentityValidator:
    """Identity hook: each requirement key must be in the identity.

    A requirement value of ``true`` asks only for a non-empty value; any other value must be
    matched exactly. Stateless, so every backend uses it as is.
    """

    async def validate(
        self,
        identity: Mapping[str, JsonValue],
        requirements: Mapping[str, JsonValue],
        *,
        peer_id: str,
        session_id: str,
    ) -> bool:
        """True when ``identity`` meets every requirement (no I/O: it never yields)."""
        for key, expected in requirements.items():
            if key not in identity:
                return False
            value = identity[key]
            if expected is True:
                if value in (None, "", [], {}):
                    return False
            elif value != expected:
                return False
        return True


class Cursor(Protocol):
    """The part of a DB-API cursor the SQL backends use (``?`` placeholders)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, seq_of_params: Sequence[Sequence[Any]], /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class SqlDatabase(Protocol):
    """A connection source the SQL stores run their transactions on."""

    #: ``" FOR UPDATE"`` where the database locks selected rows, ``""`` where a transaction
    #: already holds the write lock (SQLite's ``BEGIN IMMEDIATE``).
    for_update: str

    def transact(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` inside one transaction (committed if it returns, rolled back if it
        raises), in the calling thread. Thread-safe."""
        ...

    async def run(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` as one transaction (grouped with concurrent calls where the database
        groups commits); return once it is durable. Cancelled before it began, nothing of it is
        done; once begun it finishes, and the cancellation comes after."""
        ...

    async def write(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` as one transaction of its own; return once it is durable. Cancellation
        as for :meth:`run`."""
        ...
