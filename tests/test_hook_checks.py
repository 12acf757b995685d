"""``SessionHooks(...)`` / ``InviteeHooks(...)`` check their hooks when built: a missing method
or a synchronous one is a ``TypeError`` naming the hook and the method."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from taleus_hooks.memory import (
    MemoryAuditSink,
    MemoryBackend,
    MemoryIdentityValidator,
    MemoryProvisioner,
    MemoryTokenStore,
)

from taleus_bootstrap import AuditEvent, InviteeHooks, SessionHooks, TokenInfo

from .faults import Faulty


class AsyncTokens:
    async def validate(self, token: str, *, session_id: str, peer_id: str) -> TokenInfo | None:
        return None

    async def mark_used(self, token: str, *, session_id: str) -> None:
        return None

    async def release(self, token: str, *, session_id: str) -> None:
        return None


class SyncValidate(AsyncTokens):
    def validate(  # type: ignore[override]
        self, token: str, *, session_id: str, peer_id: str
    ) -> TokenInfo | None:
        return None


class NoRelease:
    async def validate(self, token: str, *, session_id: str, peer_id: str) -> TokenInfo | None:
        return None

    async def mark_used(self, token: str, *, session_id: str) -> None:
        return None


class AsyncCall:
    async def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None


class SyncCall:
    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None


async def _async_validate(prefix: str, token: str, *, session_id: str, peer_id: str) -> None:
    return None


class ObjectMethods:
    """Methods that are callable objects and partials, not ``async def`` methods."""

    def __init__(self, call: Any) -> None:
        self.validate = functools.partial(_async_validate, "prefix")
        self.mark_used = call
        self.release = call


def _decorated(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:  # returns fn's coroutine
        return fn(*args, **kwargs)

    return wrapper


class DecoratedTokens(AsyncTokens):
    validate = _decorated(AsyncTokens.validate)  # type: ignore[assignment]


class SyncAudit:
    def log_events(self, session_id: str, events: Sequence[AuditEvent]) -> None:
        return None


class OldAudit:
    async def log_session(self, session_id: str, event: AuditEvent) -> None:
        return None


class NoAudit:
    pass


class SyncOutcomes:
    def recorded_outcome(self, session_id: str, peer_id: str) -> str:
        return "unknown"


class SyncIdentity:
    def validate(self, identity: Any, requirements: Any, *, peer_id: str, session_id: str) -> bool:
        return False


class SyncCommit(MemoryProvisioner):
    def commit(self, result: Any, *, session_id: str) -> None:  # type: ignore[override]
        return None


class NoAccept:
    async def provision(self, request: Any) -> Any: ...

    async def release(self, result: Any, *, session_id: str) -> None: ...

    async def commit(self, result: Any, *, session_id: str) -> None: ...


def test_a_synchronous_validate_is_refused_by_name() -> None:
    with pytest.raises(TypeError) as info:
        SessionHooks(token=SyncValidate(), database=MemoryProvisioner())
    assert str(info.value) == (
        "SessionHooks(token=SyncValidate()): SyncValidate.validate must be an async method "
        "(async def), got a plain function"
    )


def test_a_missing_release_is_refused_by_name() -> None:
    with pytest.raises(TypeError) as info:
        SessionHooks(token=NoRelease(), database=MemoryProvisioner())  # type: ignore[arg-type]
    assert str(info.value) == "SessionHooks(token=NoRelease()): NoRelease has no method release"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"database": SyncCommit()},
            "SessionHooks(database=SyncCommit()): SyncCommit.commit must be an async method",
        ),
        (
            {"database": NoAccept()},
            "SessionHooks(database=NoAccept()): NoAccept has no method accept",
        ),
        (
            {"identity": SyncIdentity()},
            "SessionHooks(identity=SyncIdentity()): SyncIdentity.validate must be an async",
        ),
        (
            {"audit": SyncAudit()},
            "SessionHooks(audit=SyncAudit()): SyncAudit.log_events must be an async method",
        ),
        (
            {"audit": NoAudit()},
            "SessionHooks(audit=NoAudit()): NoAudit has neither log_events",
        ),
        (
            {"outcomes": SyncOutcomes()},
            "SessionHooks(outcomes=SyncOutcomes()): SyncOutcomes.recorded_outcome must be an",
        ),
        (
            {"token": ObjectMethods(SyncCall())},
            "SessionHooks(token=ObjectMethods()): ObjectMethods.mark_used must be an async "
            "method (async def), got a SyncCall object whose __call__ is not async",
        ),
        (
            {"token": ObjectMethods(42)},
            "SessionHooks(token=ObjectMethods()): ObjectMethods.mark_used is not callable",
        ),
    ],
)
def test_each_hook_and_method_is_checked(kwargs: dict[str, Any], message: str) -> None:
    parts: dict[str, Any] = {"token": AsyncTokens(), "database": MemoryProvisioner()}
    with pytest.raises(TypeError) as info:
        SessionHooks(**{**parts, **kwargs})
    assert str(info.value).startswith(message), str(info.value)


def test_the_invitee_hooks_are_checked_too() -> None:
    with pytest.raises(TypeError, match=r"InviteeHooks\(database=SyncCommit\(\)\): SyncCommit"):
        InviteeHooks(database=SyncCommit())
    with pytest.raises(TypeError, match=r"InviteeHooks\(audit=SyncAudit\(\)\)"):
        InviteeHooks(database=MemoryProvisioner(), audit=SyncAudit())  # type: ignore[arg-type]


def test_async_callables_of_every_shape_are_accepted() -> None:
    # Bound async methods, partials of async functions, objects with an async __call__, a
    # decorated async method, an audit hook with only log_session, no outcomes hook.
    SessionHooks(token=ObjectMethods(AsyncCall()), database=MemoryProvisioner())
    SessionHooks(token=DecoratedTokens(), database=MemoryProvisioner(), audit=OldAudit())  # type: ignore[arg-type]
    SessionHooks(
        token=MemoryTokenStore(),
        database=MemoryProvisioner(),
        identity=MemoryIdentityValidator(),
        audit=MemoryAuditSink(),
        outcomes=None,
    )


def test_the_projects_own_hooks_and_wrappers_pass() -> None:
    backend = MemoryBackend()
    hooks = backend.hooks()
    assert isinstance(hooks, SessionHooks)
    backend.invitee_hooks()
    # The fault injector and other proxies forward methods through __getattr__.
    faulty = Faulty(MemoryTokenStore(), "release", "raise")
    SessionHooks(token=faulty, database=Faulty(MemoryProvisioner(), "commit", "hang"))
    with pytest.raises(TypeError, match="Faulty has no method release"):
        SessionHooks(token=Faulty(NoRelease(), "validate", "raise"), database=MemoryProvisioner())
