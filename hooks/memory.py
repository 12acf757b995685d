"""In-memory reference hooks: real implementations with the full hook semantics, no persistence.

Every method does its check and its update without an ``await`` at all, so under trio each is
atomic (a one-time token reserved by one session cannot be reserved by another) and returns
without yielding to the scheduler: there is no I/O to wait for. Tokens are kept
only as digests. Suitable for tests, examples and single-process nodes that may forget everything
on restart.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

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

from ._common import (
    Clock,
    HookBundle,
    RequirementsIdentityValidator,
    TokenRecord,
    check_mint_arguments,
    utc_now,
)

__all__ = [
    "MemoryAuditSink",
    "MemoryBackend",
    "MemoryIdentityValidator",
    "MemoryProvisioner",
    "MemoryTokenStore",
    "TokenRecord",
]


class MemoryTokenStore:
    """Token hook: one-time, N-use and unlimited tokens with expiry and revocation."""

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._clock = clock
        self._tokens: dict[str, TokenRecord] = {}

    def mint(
        self,
        inviter_role: Role,
        *,
        uses: int | None = 1,
        ttl: timedelta | None = timedelta(hours=1),
        identity_requirements: Mapping[str, JsonValue] | None = None,
        max_in_flight: int | None = None,
        label: str | None = None,
        token: str | None = None,
    ) -> str:
        """Create a token and return it (the only time it is seen). ``uses=None``: unlimited;
        ``max_in_flight`` caps the sessions holding a reservation of it at once."""
        check_mint_arguments(uses, max_in_flight)
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
            max_in_flight=max_in_flight,
            label=label,
            created_at=self._clock(),
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
        record = self._tokens.get(token_digest(token))
        if record is None or session_id not in record.reservations:
            raise LookupError("no reservation held by this session")
        record.reservations.discard(session_id)
        record.used += 1

    async def release(self, token: str, *, session_id: str) -> None:
        """Give back the reservation ``session_id`` holds (no-op if none)."""
        record = self._tokens.get(token_digest(token))
        if record is not None:
            record.reservations.discard(session_id)


class MemoryIdentityValidator(RequirementsIdentityValidator):
    """Identity hook: each requirement key must be in the identity.

    A requirement value of ``true`` asks only for a non-empty value; any other value must be
    matched exactly. (The same policy as every reference backend.)
    """


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
        tally = request.draft_tally()
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
        tally_id = result.tally.tally_id
        if tally_id in self.committed:
            return
        found = self.tallies.pop(tally_id, None) or self.accepted.pop(tally_id, None)
        if found is not None:
            self.released.append(tally_id)

    async def accept(self, result: ProvisionResult, *, session_id: str) -> bool:
        """Record the other party's provision."""
        self.accepted[result.tally.tally_id] = result
        return True

    async def commit(self, result: ProvisionResult, *, session_id: str) -> None:
        """Record the tally of a completed session in ``committed`` (it stays in ``tallies`` or
        ``accepted``). Raises ``LookupError`` for a tally neither provisioned nor accepted here
        (or already released); committing it again is a no-op."""
        tally_id = result.tally.tally_id
        if tally_id not in self.tallies and tally_id not in self.accepted:
            raise LookupError(f"no provision of tally {tally_id!r} to commit")
        self.committed.setdefault(tally_id, result)


class MemoryAuditSink:
    """Audit hook: keeps ``(session_id, event)`` pairs in arrival order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, AuditEvent]] = []

    async def log_events(self, session_id: str, events: Sequence[AuditEvent]) -> None:
        """Append ``events`` (each through :meth:`log_session`, atomically: no await between)."""
        if type(self).log_session is MemoryAuditSink.log_session:  # the common case, in one go
            self.events.extend([(session_id, event) for event in events])
            return
        for event in events:
            await self.log_session(session_id, event)

    async def log_session(self, session_id: str, event: AuditEvent) -> None:
        """Append one ``event``."""
        self.events.append((session_id, event))

    def for_session(self, session_id: str) -> list[AuditEvent]:
        """The events of one session, in order."""
        return [event for sid, event in self.events if sid == session_id]

    def session_ids(self) -> list[str]:
        """Every session id seen, in order of first appearance."""
        return list(dict.fromkeys(sid for sid, _ in self.events))


@dataclass
class MemoryBackend(HookBundle):
    """One party's memory hooks, bundled like the SQL backends (``hooks()``,
    ``invitee_hooks()``)."""

    tokens: MemoryTokenStore = field(default_factory=MemoryTokenStore)
    provisioner: MemoryProvisioner = field(default_factory=MemoryProvisioner)
    identity: MemoryIdentityValidator = field(default_factory=MemoryIdentityValidator)
    audit: MemoryAuditSink = field(default_factory=MemoryAuditSink)

    @property
    def database(self) -> MemoryProvisioner:
        """Alias of :attr:`provisioner`."""
        return self.provisioner

    def close(self) -> None:
        """Nothing to close (for symmetry with the SQL backends)."""
