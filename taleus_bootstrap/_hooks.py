"""The pluggable hooks a session calls, as ``typing.Protocol`` classes.

Users implement them without inheriting from anything here; :class:`SessionHooks` bundles them for
the inviter and :class:`InviteeHooks` for the invitee. Every hook is async. Results are validated
(``TokenInfo`` and ``ProvisionResult`` are pydantic models; a hook returning anything else ends
its session with ``internal_error`` / ``provision_failed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Protocol, runtime_checkable

from pydantic import Field, JsonValue

from ._events import AuditEvent
from ._frames import PeerIdStr, Provision, Role, UtcDatetime, _Model

__all__ = [
    "AuditHook",
    "DatabaseHook",
    "IdentityHook",
    "InviteeHooks",
    "NoopAudit",
    "RefuseIdentity",
    "ProvisionRequest",
    "ProvisionResult",
    "SessionHooks",
    "TokenHook",
    "TokenInfo",
]

ProvisionResult = Provision
"""What ``database.provision`` returns: the ``PROVISION`` object (tally and database)."""


class TokenInfo(_Model):
    """What the token hook knows of a valid token it has just reserved one use of."""

    inviter_role: Role
    expires_at: UtcDatetime | None = None
    identity_requirements: dict[str, JsonValue] | None = None


class ProvisionRequest(_Model):
    """Asks the stock party's database hook for a shared database holding a draft tally."""

    session_id: Annotated[str, Field(min_length=1, max_length=64)]
    tally_id: Annotated[str, Field(min_length=1, max_length=128)]
    provisioner_role: Role
    stock_party_id: PeerIdStr
    foil_party_id: PeerIdStr
    created_at: UtcDatetime


@runtime_checkable
class TokenHook(Protocol):
    """Validates tokens and tracks their uses: reserve, then commit or release."""

    async def validate(self, token: str, *, session_id: str, peer_id: str) -> TokenInfo | None:
        """Validate ``token`` and atomically reserve one use for ``session_id``.

        Return ``None`` for an unknown, expired, revoked or used-up token (all look alike on the
        wire). A one-time token reserved by a live session must not be reservable by another.
        """
        ...

    async def mark_used(self, token: str, *, session_id: str) -> None:
        """Commit the reservation ``session_id`` holds: the session completed."""
        ...

    async def release(self, token: str, *, session_id: str) -> None:
        """Give back the reservation ``session_id`` holds: the session did not complete."""
        ...


@runtime_checkable
class IdentityHook(Protocol):
    """Decides whether the invitee's identity meets the token's requirements."""

    async def validate(
        self,
        identity: Mapping[str, JsonValue],
        requirements: Mapping[str, JsonValue],
        *,
        peer_id: str,
        session_id: str,
    ) -> bool:
        """True to accept the identity; False rejects with ``identity_rejected``."""
        ...


@runtime_checkable
class DatabaseHook(Protocol):
    """Provisions, releases and accepts the shared tally database."""

    async def provision(self, request: ProvisionRequest) -> ProvisionResult:
        """Create the shared database with the draft tally described by ``request``."""
        ...

    async def release(self, result: ProvisionResult, *, session_id: str) -> None:
        """Remove a database this side provisioned whose session never completed."""
        ...

    async def accept(self, result: ProvisionResult, *, session_id: str) -> bool:
        """Record a tally the *other* party provisioned; False refuses it (``provision_failed``)."""
        ...


@runtime_checkable
class AuditHook(Protocol):
    """Receives every audit event of every session, in order per session."""

    async def log_session(self, session_id: str, event: AuditEvent) -> None:
        """Record ``event`` for ``session_id``."""
        ...


class NoopAudit:
    """The default audit hook: discards every event."""

    async def log_session(self, session_id: str, event: AuditEvent) -> None:
        """Discard ``event``."""
        return None


class RefuseIdentity:
    """Identity hook used when none is given: refuses every identity.

    Only reached for tokens that carry identity requirements, which cannot be checked without a
    real identity hook; failing closed is the safe default for money infrastructure.
    """

    async def validate(
        self,
        identity: Mapping[str, JsonValue],
        requirements: Mapping[str, JsonValue],
        *,
        peer_id: str,
        session_id: str,
    ) -> bool:
        """Refuse."""
        return False


@dataclass(frozen=True)
class SessionHooks:
    """The inviter's hooks: token and database are required; identity and audit have defaults."""

    token: TokenHook
    database: DatabaseHook
    identity: IdentityHook = field(default_factory=RefuseIdentity)
    audit: AuditHook = field(default_factory=NoopAudit)


@dataclass(frozen=True)
class InviteeHooks:
    """The invitee's hooks: ``database`` provisions when the inviter is foil and records the
    tally the inviter provisioned when it is stock; ``audit`` defaults to a no-op."""

    database: DatabaseHook
    audit: AuditHook = field(default_factory=NoopAudit)
