"""In-memory reference hooks: real implementations with the full hook semantics, no persistence.

Every method does its check and its update without an ``await`` in between, so under trio each is
atomic: a one-time token reserved by one session cannot be reserved by another. Tokens are kept
only as digests. Suitable for tests, examples and single-process nodes that may forget everything
on restart.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import trio
from pydantic import JsonValue

from taleus_bootstrap import (
    AuditEvent,
    DatabaseInfo,
    Provision,
    ProvisionRequest,
    ProvisionResult,
    Role,
    Tally,
    TokenInfo,
    token_digest,
)

__all__ = [
    "MemoryAuditSink",
    "MemoryIdentityValidator",
    "MemoryProvisioner",
    "MemoryTokenStore",
    "TokenRecord",
]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class TokenRecord:
    """What the store keeps of one token (never the token itself)."""

    digest: str
    inviter_role: Role
    expires_at: datetime | None
    max_uses: int | None  # None: unlimited
    identity_requirements: dict[str, JsonValue] | None
    used: int = 0
    revoked: bool = False
    reservations: set[str] = field(default_factory=set)

    def available(self, now: datetime) -> bool:
        """Whether one more use could be reserved at ``now``."""
        if self.revoked or (self.expires_at is not None and now >= self.expires_at):
            return False
        return self.max_uses is None or self.used + len(self.reservations) < self.max_uses


class MemoryTokenStore:
    """Token hook: one-time, N-use and unlimited tokens with expiry and revocation."""

    def __init__(self, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._clock = clock
        self._tokens: dict[str, TokenRecord] = {}

    def mint(
        self,
        inviter_role: Role,
        *,
        uses: int | None = 1,
        ttl: timedelta | None = timedelta(hours=1),
        identity_requirements: Mapping[str, JsonValue] | None = None,
        token: str | None = None,
    ) -> str:
        """Create a token and return it (the only time it is seen). ``uses=None``: unlimited."""
        if uses is not None and uses < 1:
            raise ValueError("uses must be at least 1 (or None for unlimited)")
        token = token or secrets.token_urlsafe(24)
        digest = token_digest(token)
        if digest in self._tokens:
            raise ValueError("token already exists")
        self._tokens[digest] = TokenRecord(
            digest=digest,
            inviter_role=inviter_role,
            expires_at=self._clock() + ttl if ttl is not None else None,
            max_uses=uses,
            identity_requirements=dict(identity_requirements) if identity_requirements else None,
        )
        return token

    def revoke(self, token: str) -> bool:
        """Revoke a token; True if it existed."""
        record = self._tokens.get(token_digest(token))
        if record is None:
            return False
        record.revoked = True
        return True

    def get(self, token: str) -> TokenRecord | None:
        """The record of ``token`` (for inspection), or None."""
        return self._tokens.get(token_digest(token))

    def records(self) -> tuple[TokenRecord, ...]:
        """Every token record."""
        return tuple(self._tokens.values())

    @property
    def reservations_held(self) -> int:
        """Reservations currently held across all tokens."""
        return sum(len(r.reservations) for r in self._tokens.values())

    async def validate(self, token: str, *, session_id: str, peer_id: str) -> TokenInfo | None:
        """Validate and reserve one use for ``session_id`` (atomic: no await in between)."""
        await trio.lowlevel.checkpoint()
        record = self._tokens.get(token_digest(token))
        if record is None or not record.available(self._clock()):
            return None
        record.reservations.add(session_id)
        return TokenInfo(
            inviter_role=record.inviter_role,
            expires_at=record.expires_at,
            identity_requirements=record.identity_requirements,
        )

    async def mark_used(self, token: str, *, session_id: str) -> None:
        """Commit the reservation ``session_id`` holds."""
        await trio.lowlevel.checkpoint()
        record = self._tokens.get(token_digest(token))
        if record is None or session_id not in record.reservations:
            raise LookupError("no reservation held by this session")
        record.reservations.discard(session_id)
        record.used += 1

    async def release(self, token: str, *, session_id: str) -> None:
        """Give back the reservation ``session_id`` holds (no-op if none)."""
        await trio.lowlevel.checkpoint()
        record = self._tokens.get(token_digest(token))
        if record is not None:
            record.reservations.discard(session_id)


class MemoryIdentityValidator:
    """Identity hook: each requirement key must be in the identity.

    A requirement value of ``true`` asks only for a non-empty value; any other value must be
    matched exactly.
    """

    async def validate(
        self,
        identity: Mapping[str, JsonValue],
        requirements: Mapping[str, JsonValue],
        *,
        peer_id: str,
        session_id: str,
    ) -> bool:
        """True when ``identity`` meets every requirement."""
        await trio.lowlevel.checkpoint()
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


class MemoryProvisioner:
    """Database hook: keeps draft tallies in dictionaries.

    ``tallies`` holds what this side provisioned and was not released; ``accepted`` what the
    other side provisioned and this side accepted and did not release; ``committed`` the
    provisions of completed sessions (each also stays in ``tallies`` or ``accepted``: ``release``
    of a committed tally removes nothing); ``released`` the tally ids given back.
    """

    def __init__(self, *, endpoint_prefix: str = "memory://tallies/") -> None:
        self.endpoint_prefix = endpoint_prefix
        self.tallies: dict[str, Tally] = {}
        self.accepted: dict[str, Provision] = {}
        self.committed: dict[str, Provision] = {}
        self.released: list[str] = []

    async def provision(self, request: ProvisionRequest) -> ProvisionResult:
        """Record a draft tally and return where it lives."""
        await trio.lowlevel.checkpoint()
        tally = Tally(
            tally_id=request.tally_id,
            provisioner_role=request.provisioner_role,
            stock_party_id=request.stock_party_id,
            foil_party_id=request.foil_party_id,
            created_at=request.created_at,
        )
        self.tallies[tally.tally_id] = tally
        return Provision(
            tally=tally,
            database=DatabaseInfo(
                endpoint=self.endpoint_prefix + tally.tally_id,
                credentials_ref=f"memory:{tally.tally_id}",
            ),
        )

    async def release(self, result: ProvisionResult, *, session_id: str) -> None:
        """Forget a tally whose session never completed (provisioned or accepted here).

        A committed tally is permanent: releasing it is a no-op (the sessions never do that).
        """
        await trio.lowlevel.checkpoint()
        tally_id = result.tally.tally_id
        if tally_id in self.committed:
            return
        found = self.tallies.pop(tally_id, None) or self.accepted.pop(tally_id, None)
        if found is not None:
            self.released.append(tally_id)

    async def accept(self, result: ProvisionResult, *, session_id: str) -> bool:
        """Record the other party's provision."""
        await trio.lowlevel.checkpoint()
        self.accepted[result.tally.tally_id] = result
        return True

    async def commit(self, result: ProvisionResult, *, session_id: str) -> None:
        """Record the tally of a completed session in ``committed`` (it stays in ``tallies`` or
        ``accepted``). Raises ``LookupError`` for a tally neither provisioned nor accepted here
        (or already released); committing it again is a no-op."""
        await trio.lowlevel.checkpoint()
        tally_id = result.tally.tally_id
        if tally_id not in self.tallies and tally_id not in self.accepted:
            raise LookupError(f"no provision of tally {tally_id!r} to commit")
        self.committed.setdefault(tally_id, result)


class MemoryAuditSink:
    """Audit hook: keeps ``(session_id, event)`` pairs in arrival order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, AuditEvent]] = []

    async def log_session(self, session_id: str, event: AuditEvent) -> None:
        """Append ``event``."""
        self.events.append((session_id, event))

    def for_session(self, session_id: str) -> list[AuditEvent]:
        """The events of one session, in order."""
        return [event for sid, event in self.events if sid == session_id]

    def session_ids(self) -> list[str]:
        """Every session id seen, in order of first appearance."""
        return list(dict.fromkeys(sid for sid, _ in self.events))
