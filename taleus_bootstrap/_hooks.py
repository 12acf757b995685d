"""The pluggable hooks a session calls, as ``typing.Protocol`` classes.

Users implement them without inheriting from anything here; :class:`SessionHooks` bundles them for
the inviter and :class:`InviteeHooks` for the invitee. Every hook is async. Results are validated
(``TokenInfo`` and ``ProvisionResult`` are pydantic models; a hook returning anything else ends
its session with ``internal_error`` / ``provision_failed``).

On each side that holds a session's tally (provisioned or accepted there), the database hook is
told ``commit`` when the session completes; a provision of a session that does not complete is
given back through ``release``; never both for one tally. A hook called after completion
(``token.mark_used`` in the stock flow, ``database.commit``) cannot fail the session any more:
its failure is audited as a ``HookError`` and logged.

The audit hook receives a session's events in batches (:meth:`AuditHook.log_events`), written
before each frame is sent, before each hook call with a side effect and at the end of the
session; an audit hook written for ``log_session(session_id, event)`` alone still works
(:func:`batched_audit` feeds it one event at a time).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Protocol, runtime_checkable

from pydantic import Field, JsonValue

from ._events import AuditEvent
from ._frames import PeerIdStr, Provision, Role, Tally, UtcDatetime, _Model

if TYPE_CHECKING:
    from ._resolve import OutcomeHook  # (it imports trio)

__all__ = [
    "AuditHook",
    "DatabaseHook",
    "batched_audit",
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

    def draft_tally(self) -> Tally:
        """The draft tally this request describes (what the provisioned database must hold)."""
        return Tally(
            tally_id=self.tally_id,
            provisioner_role=self.provisioner_role,
            stock_party_id=self.stock_party_id,
            foil_party_id=self.foil_party_id,
            created_at=self.created_at,
        )


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
    """Provisions, accepts, then commits or releases the shared tally database.

    A tally this side provisioned or accepted is committed once its session completes; one
    whose session does not complete is released instead (never both). A backend may sweep
    provisions left uncommitted after a TTL; a committed one must survive any such sweep.
    """

    async def provision(self, request: ProvisionRequest) -> ProvisionResult:
        """Create the shared database with the draft tally described by ``request``."""
        ...

    async def release(self, result: ProvisionResult, *, session_id: str) -> None:
        """Remove a database this side provisioned whose session never completed."""
        ...

    async def accept(self, result: ProvisionResult, *, session_id: str) -> bool:
        """Record a tally the *other* party provisioned; False refuses it (``provision_failed``)."""
        ...

    async def commit(self, result: ProvisionResult, *, session_id: str) -> None:
        """The session completed: the tally in ``result`` (provisioned or accepted by this side) is
        permanent. Called once per completed session on each side that holds the tally; ``release``
        is never called for it afterwards. A sweep of unacknowledged provisions must not remove it.

        ``session_id`` is the one this side's ``provision`` / ``accept`` call of the session used.
        Bounded by ``provision_timeout``; raising, hanging or returning anything but ``None``
        cannot undo the completed session: it is audited as a ``HookError`` and logged.
        """
        ...


@runtime_checkable
class AuditHook(Protocol):
    """Receives every audit event of every session, in order per session, in batches."""

    async def log_events(self, session_id: str, events: Sequence[AuditEvent]) -> None:
        """Record ``events`` (one or more, oldest first) for ``session_id``; return once they are
        durable. A batch is recorded whole or not at all: raising means none of it is."""
        ...


class NoopAudit:
    """The default audit hook: discards every event."""

    async def log_events(self, session_id: str, events: Sequence[AuditEvent]) -> None:
        """Discard ``events``."""
        return None


class _OneEventAtATime:
    """An audit hook with only ``log_session(session_id, event)``, fed a batch event by event."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook

    async def log_events(self, session_id: str, events: Sequence[AuditEvent]) -> None:
        for event in events:
            await self.hook.log_session(session_id, event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hook, name)


def batched_audit(hook: Any) -> AuditHook:
    """``hook`` as an :class:`AuditHook`: itself when it has ``log_events``; a hook with only
    ``log_session(session_id, event)`` (this package's 0.1 interface) is fed one event at a
    time. ``TypeError`` for an object with neither."""
    if callable(getattr(hook, "log_events", None)):
        return hook  # type: ignore[no-any-return]
    if callable(getattr(hook, "log_session", None)):
        return _OneEventAtATime(hook)
    raise TypeError(
        f"audit hook {type(hook).__name__} has neither log_events(session_id, events) nor"
        " log_session(session_id, event)"
    )


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


_TOKEN_METHODS = ("validate", "mark_used", "release")
_DATABASE_METHODS = ("provision", "release", "accept", "commit")


def _unwrapped(fn: Any) -> Any:
    """``fn`` without its bound-method and :func:`functools.partial` layers."""
    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif inspect.ismethod(fn):
            fn = fn.__func__
        else:
            return fn


def _sync_kind(fn: Any) -> str | None:
    """What makes ``fn`` certainly not async (``"a plain function"``, ...), or ``None`` if it
    is async or cannot be told apart from an async callable (a decorated function: its wrapper
    may return an awaitable)."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is not None and code.co_flags & inspect.CO_COROUTINE:
        return None  # the common case, an async def method: quick
    target = _unwrapped(fn)
    if inspect.iscoroutinefunction(target) or hasattr(target, "__wrapped__"):
        return None
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        return "a generator function"
    if inspect.isfunction(target):
        return "a plain function"
    if not inspect.isroutine(target):
        call = inspect.getattr_static(type(target), "__call__", None)
        if inspect.isfunction(call) and _sync_kind(call) is not None:
            return f"a {type(target).__name__} object whose __call__ is not async"
    return None


def _check_hook(owner: str, field_name: str, hook: Any, methods: Sequence[str]) -> None:
    """``TypeError`` naming the hook and the method unless ``hook`` has each of ``methods``
    as an async callable."""
    where = f"{owner}({field_name}={type(hook).__name__}())"
    kind = type(hook).__name__
    for method in methods:
        try:
            fn = getattr(hook, method)
        except AttributeError:
            raise TypeError(f"{where}: {kind} has no method {method}") from None
        if not callable(fn):
            raise TypeError(f"{where}: {kind}.{method} is not callable")
        sync = _sync_kind(fn)
        if sync is not None:
            raise TypeError(
                f"{where}: {kind}.{method} must be an async method (async def), got {sync}"
            )


def _check_audit(owner: str, hook: Any) -> None:
    for method in ("log_events", "log_session"):
        if callable(getattr(hook, method, None)):
            _check_hook(owner, "audit", hook, (method,))
            return
    raise TypeError(
        f"{owner}(audit={type(hook).__name__}()): {type(hook).__name__} has neither"
        " log_events(session_id, events) nor log_session(session_id, event)"
    )


@dataclass(frozen=True)
class SessionHooks:
    """The inviter's hooks: token and database are required; identity and audit have defaults.

    Each hook is checked when the bundle is built: a missing method, or one that is not async
    (a plain ``def``), raises a :class:`TypeError` naming the hook and the method. Callable
    objects with an async ``__call__`` and :func:`functools.partial` of async functions pass.
    """

    token: TokenHook
    database: DatabaseHook
    identity: IdentityHook = field(default_factory=RefuseIdentity)
    audit: AuditHook = field(default_factory=NoopAudit)
    outcomes: OutcomeHook | None = None
    """Answers invitees resolving an unconfirmed outcome (protocol section 14) from the store's
    durable records; without it the manager answers from the sessions it remembers."""

    def __post_init__(self) -> None:
        _check_hook("SessionHooks", "token", self.token, _TOKEN_METHODS)
        _check_hook("SessionHooks", "database", self.database, _DATABASE_METHODS)
        _check_hook("SessionHooks", "identity", self.identity, ("validate",))
        _check_audit("SessionHooks", self.audit)
        if self.outcomes is not None:
            _check_hook("SessionHooks", "outcomes", self.outcomes, ("recorded_outcome",))


@dataclass(frozen=True)
class InviteeHooks:
    """The invitee's hooks: ``database`` provisions when the inviter is foil and records the
    tally the inviter provisioned when it is stock; ``audit`` defaults to a no-op."""

    database: DatabaseHook
    audit: AuditHook = field(default_factory=NoopAudit)

    def __post_init__(self) -> None:
        _check_hook("InviteeHooks", "database", self.database, _DATABASE_METHODS)
        _check_audit("InviteeHooks", self.audit)
