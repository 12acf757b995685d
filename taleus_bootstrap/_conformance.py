"""A conformance kit for hook implementations, after ``trio.testing.check_two_way_stream``.

Each ``check_*`` coroutine takes a *harness factory*: a zero-argument callable returning an async
context manager that yields a fresh harness (the hook plus the few synchronous back doors the kit
needs to look behind it). Every sub-check opens its own harness, so no state leaks from one to the
next. A failed expectation raises :class:`AssertionError` naming the sub-check; an exception the
hook raises where none is allowed propagates unchanged, with a note naming the sub-check.

The kit uses explicit ``raise AssertionError`` (never ``assert``), so it also runs under
``python -O``, and it does not import pytest.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeAlias, TypeVar
from urllib.parse import urlsplit

import trio
from pydantic import JsonValue

from ._errors import RejectionCode
from ._events import (
    AdmissionSummary,
    AuditEvent,
    ContactReceived,
    HookError,
    Rejection,
    SessionOutcome,
    SessionStarted,
    StateChanged,
    token_digest,
)
from ._frames import DatabaseInfo, Provision, Role, Tally
from ._hooks import (
    AuditHook,
    DatabaseHook,
    IdentityHook,
    ProvisionRequest,
    ProvisionResult,
    TokenHook,
    TokenInfo,
    batched_audit,
)

__all__ = [
    "AuditHookHarness",
    "DatabaseHookHarness",
    "ManualClock",
    "TokenHookHarness",
    "check_audit_hook",
    "check_database_hook",
    "check_identity_hook",
    "check_token_hook",
]

# Syntactically valid libp2p peer ids (base58 text form) used as the parties of the checks.
STOCK_PEER: Final = "12D3KooWDSzhRqU2agPZGfN42irroipZotydBWxLhLoJP9ATU7dq"
FOIL_PEER: Final = "12D3KooWDUuAp3AUT2pT3UiMHbgqsdtSsvD7Et8Hoc6Rzp3yoc56"

_DEFAULT_START: Final = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
_HOUR: Final = timedelta(hours=1)
_EXPIRES_AT_TOLERANCE: Final = timedelta(seconds=1)
_CONCURRENT_TASKS: Final = 50


class ManualClock:
    """A settable UTC clock for stores that take ``clock: Callable[[], datetime]``.

    It only moves when :meth:`advance` is called, so expiry can be tested without sleeping.
    """

    def __init__(self, start: datetime | None = None) -> None:
        """Start at ``start`` (an aware UTC datetime), by default a fixed instant in 2030."""
        if start is None:
            start = _DEFAULT_START
        offset = start.utcoffset()
        if offset is None or offset.total_seconds() != 0:
            raise ValueError("ManualClock needs an aware UTC datetime")
        self._now = start.astimezone(UTC)

    def __call__(self) -> datetime:
        """The current (manual) time."""
        return self._now

    def advance(self, delta: timedelta) -> None:
        """Move the clock forward by ``delta`` (which must not be negative)."""
        if delta < timedelta(0):
            raise ValueError("ManualClock only moves forward")
        self._now += delta


@dataclass(frozen=True)
class TokenHookHarness:
    """What :func:`check_token_hook` needs of one fresh token store.

    ``mint(role, *, uses, ttl, identity_requirements=None)`` creates a token and returns it
    (``uses=None``: unlimited; ``ttl=None``: never expires); ``revoke(token)`` returns True if the
    token existed; ``clock`` is the store's clock, which the kit advances; ``stored_bytes()``
    returns everything the store persisted, as bytes (a database file, a dump of its rows...),
    so the kit can check that no token is stored in the clear. All four are synchronous.
    """

    hook: TokenHook
    mint: Callable[..., str]
    revoke: Callable[[str], bool]
    clock: ManualClock
    stored_bytes: Callable[[], bytes]


@dataclass(frozen=True)
class AuditHookHarness:
    """What :func:`check_audit_hook` needs of one fresh audit sink.

    ``read(session_id)`` (synchronous) returns the events stored for one session, in stored order.
    """

    hook: AuditHook
    read: Callable[[str], Sequence[AuditEvent]]


@dataclass(frozen=True)
class DatabaseHookHarness:
    """What :func:`check_database_hook` needs of one fresh provisioner.

    ``exists(result)`` says whether the provisioned database (still) exists; ``read_tally(result)``
    reads the draft tally back through ``result.database.endpoint`` (None if the database is
    gone). Both are synchronous.
    """

    hook: DatabaseHook
    exists: Callable[[ProvisionResult], bool]
    read_tally: Callable[[ProvisionResult], Tally | None]


H = TypeVar("H")
_Factory: TypeAlias = Callable[[], AbstractAsyncContextManager[H]]
_SubCheck: TypeAlias = Callable[[_Factory[H]], Awaitable[None]]


# -- helpers -------------------------------------------------------------------------------


def _check(condition: bool, message: str) -> None:
    """Raise :class:`AssertionError` with ``message`` unless ``condition`` holds (-O safe)."""
    __tracebackhide__ = True
    if not condition:
        raise AssertionError(message)


@contextmanager
def _expect_raises(expected: type[BaseException], what: str) -> Iterator[None]:
    __tracebackhide__ = True
    try:
        yield
    except expected:
        return
    raise AssertionError(f"{what}: expected {expected.__name__}, nothing was raised")


def _tag() -> str:
    """A short random tag, so ids stay unique even in a store shared across runs."""
    return secrets.token_hex(4)


def _session_ids(label: str, count: int) -> list[str]:
    tag = _tag()
    return [f"conf-{label}-{tag}-{i:03d}" for i in range(count)]


async def _run(name: str, checks: Sequence[tuple[str, _SubCheck[H]]], make: _Factory[H]) -> None:
    for title, sub_check in checks:
        try:
            await sub_check(make)
        except AssertionError as exc:
            failure = AssertionError(f"{name}: {title}: {exc}")
            raise failure.with_traceback(exc.__traceback__) from None
        except Exception as exc:
            exc.add_note(f"(raised during {name}: {title})")
            raise


async def _gathered(
    count: int, attempt: Callable[[int], Awaitable[TokenInfo | None]]
) -> list[TokenInfo | None]:
    """Run ``attempt(i)`` for ``i < count`` in as many trio tasks, all started (waiting at a
    gate) before any of them calls the hook; return the results by index."""
    results: list[TokenInfo | None] = [None] * count
    gate = trio.Event()
    arrived = 0

    async def one(i: int) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == count:
            gate.set()
        await gate.wait()
        results[i] = await attempt(i)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return results


async def _validate(h: TokenHookHarness, token: str, session_id: str) -> TokenInfo | None:
    info = await h.hook.validate(token, session_id=session_id, peer_id=FOIL_PEER)
    _check(
        info is None or isinstance(info, TokenInfo),
        f"validate must return a TokenInfo or None, got {type(info).__name__}",
    )
    return info


async def _reserves(h: TokenHookHarness, token: str, session_id: str, why: str) -> TokenInfo:
    info = await _validate(h, token, session_id)
    if info is None:
        raise AssertionError(f"validate returned None, expected a reservation ({why})")
    return info


async def _refuses(h: TokenHookHarness, token: str, session_id: str, why: str) -> None:
    info = await _validate(h, token, session_id)
    _check(info is None, f"validate reserved a use ({info!r}), expected None ({why})")


# -- token hook ----------------------------------------------------------------------------


async def _token_unknown(make: _Factory[TokenHookHarness]) -> None:
    async with make() as h:
        _check(isinstance(h.hook, TokenHook), "hook lacks validate/mark_used/release")
        s = _session_ids("unknown", 4)
        unknown = "conformance-unknown-" + secrets.token_urlsafe(16)
        await _refuses(h, unknown, s[0], "unknown token")
        await h.hook.release(unknown, session_id=s[0])  # no-op, must not raise
        with _expect_raises(LookupError, "mark_used of an unknown token"):
            await h.hook.mark_used(unknown, session_id=s[0])

        token = h.mint("stock", uses=1, ttl=_HOUR, identity_requirements=None)
        with _expect_raises(LookupError, "mark_used by a session holding no reservation"):
            await h.hook.mark_used(token, session_id=s[0])
        await _reserves(h, token, s[1], "fresh one-time token")
        await h.hook.release(token, session_id=s[2])  # holds nothing: a no-op
        await _refuses(
            h, token, s[3], "release by a session holding nothing freed another's reservation"
        )
        with _expect_raises(LookupError, "mark_used by a session holding no reservation"):
            await h.hook.mark_used(token, session_id=s[2])


async def _token_one_time(make: _Factory[TokenHookHarness]) -> None:
    async with make() as h:
        s = _session_ids("once", 6)
        requirements: dict[str, JsonValue] = {"name": True}
        minted_at = h.clock()
        token = h.mint("stock", uses=1, ttl=_HOUR, identity_requirements=requirements)
        info = await _reserves(h, token, s[0], "first validate of a one-time token")
        _check(info.inviter_role == "stock", f"inviter_role {info.inviter_role!r} != 'stock'")
        _check(info.expires_at is not None, "expires_at is None for a token minted with a ttl")
        if info.expires_at is not None:
            drift = abs(info.expires_at - (minted_at + _HOUR))
            _check(
                drift <= _EXPIRES_AT_TOLERANCE,
                f"expires_at {info.expires_at} is {drift} away from mint time + ttl",
            )
        _check(
            info.identity_requirements == requirements,
            f"identity_requirements {info.identity_requirements!r} != {requirements!r}",
        )
        await _refuses(h, token, s[1], "one-time token reserved by another live session")
        await h.hook.release(token, session_id=s[0])
        await _reserves(h, token, s[2], "one-time token whose reservation was released")
        await h.hook.mark_used(token, session_id=s[2])
        await _refuses(h, token, s[3], "one-time token already used")
        await h.hook.release(token, session_id=s[2])  # after mark_used: a no-op
        await _refuses(h, token, s[4], "release after mark_used gave the use back")


async def _token_n_use(make: _Factory[TokenHookHarness]) -> None:
    async with make() as h:
        s = _session_ids("nuse", 8)
        token = h.mint("foil", uses=3, ttl=_HOUR, identity_requirements=None)
        first = await _gathered(3, lambda i: _validate(h, token, s[i]))
        granted = sum(info is not None for info in first)
        _check(granted == 3, f"{granted} of 3 concurrent reservations of a 3-use token succeeded")
        await _refuses(h, token, s[3], "4th reservation of a 3-use token with 3 held")
        await h.hook.release(token, session_id=s[0])
        await _reserves(h, token, s[4], "3-use token after one of 3 reservations was released")
        await _refuses(h, token, s[5], "3-use token with 3 reservations held again")
        for sid in (s[1], s[2], s[4]):
            await h.hook.mark_used(token, session_id=sid)
        await _refuses(h, token, s[6], "3-use token used 3 times")


async def _token_unlimited(make: _Factory[TokenHookHarness]) -> None:
    async with make() as h:
        s = _session_ids("unlim", _CONCURRENT_TASKS + 1)
        token = h.mint("stock", uses=None, ttl=None, identity_requirements=None)

        async def reserve_and_commit(i: int) -> TokenInfo | None:
            info = await _validate(h, token, s[i])
            if info is not None:
                await h.hook.mark_used(token, session_id=s[i])
            return info

        infos = await _gathered(_CONCURRENT_TASKS, reserve_and_commit)
        granted = sum(info is not None for info in infos)
        _check(
            granted == _CONCURRENT_TASKS,
            f"{granted} of {_CONCURRENT_TASKS} sessions could reserve an unlimited token",
        )
        info = await _reserves(h, token, s[-1], f"unlimited token used {_CONCURRENT_TASKS} times")
        _check(
            info.expires_at is None,
            f"expires_at {info.expires_at} for a token minted with ttl=None",
        )


async def _token_concurrency(make: _Factory[TokenHookHarness]) -> None:
    async with make() as h:
        s = _session_ids("race", _CONCURRENT_TASKS)
        token = h.mint("stock", uses=1, ttl=_HOUR, identity_requirements=None)
        infos = await _gathered(_CONCURRENT_TASKS, lambda i: _validate(h, token, s[i]))
        granted = sum(info is not None for info in infos)
        _check(
            granted == 1,
            f"{granted} of {_CONCURRENT_TASKS} concurrent validations reserved a one-time token;"
            " exactly 1 must",
        )


async def _token_expiry(make: _Factory[TokenHookHarness]) -> None:
    async with make() as h:
        s = _session_ids("expiry", 3)
        token = h.mint("stock", uses=None, ttl=timedelta(seconds=60), identity_requirements=None)
        await _reserves(h, token, s[0], "fresh token")
        h.clock.advance(timedelta(seconds=59))
        await _reserves(h, token, s[1], "token 59 s into a 60 s ttl")
        await h.hook.release(token, session_id=s[1])
        h.clock.advance(timedelta(seconds=2))
        await _refuses(h, token, s[2], "token 61 s into a 60 s ttl")
        await h.hook.release(token, session_id=s[0])  # an expired token's reservation


async def _token_revocation(make: _Factory[TokenHookHarness]) -> None:
    async with make() as h:
        s = _session_ids("revoke", 2)
        token = h.mint("stock", uses=None, ttl=_HOUR, identity_requirements=None)
        await _reserves(h, token, s[0], "fresh token")
        _check(h.revoke(token) is True, "revoke of an existing token did not return True")
        await _refuses(h, token, s[1], "revoked token")
        await h.hook.release(token, session_id=s[0])  # a revoked token's reservation
        unknown = "conformance-unknown-" + secrets.token_urlsafe(16)
        _check(h.revoke(unknown) is False, "revoke of an unknown token did not return False")


def _token_byte_forms(token: str) -> list[tuple[str, bytes]]:
    forms = [("UTF-8 text", token.encode())]
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return forms
    if len(raw) >= 8:  # shorter raw forms could match by chance
        forms.append(("base64url-decoded bytes", raw))
    return forms


async def _token_digest_only(make: _Factory[TokenHookHarness]) -> None:
    async with make() as h:
        s = _session_ids("digest", 8)
        tokens = [
            h.mint("stock", uses=1, ttl=_HOUR, identity_requirements=None),
            h.mint("foil", uses=3, ttl=None, identity_requirements={"email": True}),
            h.mint("stock", uses=None, ttl=_HOUR, identity_requirements={"tier": "gold"}),
            h.mint("foil", uses=1, ttl=timedelta(seconds=30), identity_requirements=None),
        ]
        await _reserves(h, tokens[0], s[0], "fresh one-time token")
        await h.hook.mark_used(tokens[0], session_id=s[0])
        await _reserves(h, tokens[1], s[1], "fresh 3-use token")
        await _reserves(h, tokens[1], s[2], "3-use token with 1 reservation")
        await h.hook.release(tokens[1], session_id=s[2])
        await _reserves(h, tokens[2], s[3], "fresh unlimited token")
        await h.hook.mark_used(tokens[2], session_id=s[3])
        h.revoke(tokens[3])
        stored = h.stored_bytes()
        _check(isinstance(stored, bytes), "stored_bytes() did not return bytes")
        for i, token in enumerate(tokens):
            for form, needle in _token_byte_forms(token):
                _check(needle not in stored, f"token #{i} is stored in the clear ({form})")


async def _token_round_trip(make: _Factory[TokenHookHarness]) -> None:
    async with make() as h:
        s = _session_ids("roundtrip", 1)
        requirements: dict[str, JsonValue] = {"email": True, "tier": "gold"}
        token = h.mint("foil", uses=1, ttl=_HOUR, identity_requirements=requirements)
        info = await _reserves(h, token, s[0], "fresh token with identity requirements")
        _check(info.inviter_role == "foil", f"inviter_role {info.inviter_role!r} != 'foil'")
        _check(
            info.identity_requirements == requirements,
            f"identity_requirements {info.identity_requirements!r} != {requirements!r}",
        )


_TOKEN_CHECKS: Final[Sequence[tuple[str, _SubCheck[TokenHookHarness]]]] = (
    ("unknown tokens and sessions without a reservation", _token_unknown),
    ("one-time token", _token_one_time),
    ("3-use token", _token_n_use),
    ("unlimited token", _token_unlimited),
    (f"{_CONCURRENT_TASKS} concurrent validations of a one-time token", _token_concurrency),
    ("expiry", _token_expiry),
    ("revocation", _token_revocation),
    ("tokens stored only as digests", _token_digest_only),
    ("role and identity requirements round-trip", _token_round_trip),
)


async def check_token_hook(
    make: Callable[[], AbstractAsyncContextManager[TokenHookHarness]],
) -> None:
    """Check a :class:`~taleus_bootstrap.TokenHook` implementation against the hook contract.

    ``make()`` must return an async context manager yielding a fresh :class:`TokenHookHarness`;
    it is opened once per sub-check. Asserted:

    * an unknown token validates to None; ``release`` of an unknown token, or by a session holding
      no reservation, is a no-op (and frees nobody else's reservation); ``mark_used`` by a session
      holding no reservation raises :class:`LookupError`;
    * a one-time token: the first ``validate`` returns a :class:`~taleus_bootstrap.TokenInfo` with
      the minted role, ``expires_at`` within 1 s of mint time + ttl, and the identity
      requirements; another session gets None while it is reserved; ``release`` makes it
      reservable again; after ``mark_used`` every ``validate`` gets None, and a ``release`` after
      ``mark_used`` does not give the use back;
    * a 3-use token: 3 concurrent reservations succeed, a 4th gets None, a release frees one, and
      after 3 ``mark_used`` it is used up;
    * an unlimited token (``uses=None``, ``ttl=None``): 50 concurrent sessions reserve and
      commit, and it still validates (with ``expires_at`` None);
    * 50 trio tasks validating one one-time token at once: exactly one gets it;
    * a 60 s ttl: valid at +59 s, None at +61 s; a reservation made before expiry can still be
      released;
    * ``revoke`` returns True and the token validates to None (a reservation held before can
      still be released); revoking an unknown token returns False;
    * ``stored_bytes()`` contains no minted token, neither as UTF-8 text nor (for base64url
      tokens of 8+ raw bytes) as its decoded bytes;
    * role ``"foil"`` and identity requirements ``{"email": True, "tier": "gold"}`` come back
      exactly.
    """
    await _run("check_token_hook", _TOKEN_CHECKS, make)


# -- audit hook ----------------------------------------------------------------------------

_AUDIT_SESSIONS: Final = 20
_AUDIT_EVENTS: Final = 12
_EVENT_BASE: Final = datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _audit_events(session: int, count: int = _AUDIT_EVENTS) -> list[AuditEvent]:
    """``count`` distinct events of mixed kinds for one session (a start, an outcome last)."""
    events: list[AuditEvent] = []
    for j in range(count):
        at = _EVENT_BASE + timedelta(seconds=session, milliseconds=j)
        detail = f"session {session} event {j} \u00e9\u2713"
        event: AuditEvent
        if j == 0:
            event = SessionStarted(at=at, side="inviter", peer_id=FOIL_PEER)
        elif j == count - 1:
            event = SessionOutcome(
                at=at,
                side="inviter",
                final_state="failed",
                code=RejectionCode.PROVISION_FAILED,
                role="stock",
                tally_id=f"tally-{session}",
                duration_s=1.5 + j,
                path=("CREATED", "READING_REQUEST", "FAILED") if session % 2 else None,
            )
        elif j == count - 2:
            event = AdmissionSummary(
                at=at,
                side="inviter",
                window_start=at - timedelta(seconds=60),
                window_s=60.0,
                refused={RejectionCode.BUSY: j, RejectionCode.RATE_LIMITED: session},
                top_peers=[("0f" * 8, j)],
                peers=1,
                peers_capped=False,
            )
        elif j % 4 == 1:
            event = StateChanged(
                at=at,
                side="inviter",
                seq=j,
                from_state=f"state_{j}",
                to_state=f"state_{j + 1}",
                trigger=f"trigger_{j}",
                monotonic=1000.25 + session + j / 8,
                time_in_previous_s=j / 4,
            )
        elif j % 4 == 2:
            event = ContactReceived(
                at=at,
                side="inviter",
                token_digest=token_digest(f"token-{session}-{j}"),
                party_id=FOIL_PEER,
                cadre_addr_count=j,
            )
        elif j % 4 == 3:
            event = Rejection(
                at=at,
                side="invitee",
                code=RejectionCode.INVALID_TOKEN,
                direction="received",
                detail=detail,
                retry_after_s=float(j),
            )
        else:
            event = HookError(
                at=at,
                side="inviter",
                hook="token.mark_used",
                detail=detail,
                error_type="LookupError",
                error_message=f"no reservation ({session}/{j})",
            )
        events.append(event)
    return events


def _first_difference(got: Sequence[AuditEvent], want: Sequence[AuditEvent]) -> str:
    if len(got) != len(want):
        return f"{len(got)} events read back, {len(want)} logged"
    for j, (g, w) in enumerate(zip(got, want, strict=True)):
        if g != w:
            return f"event #{j} read back as {g!r}, logged as {w!r}"
    return "no difference"


def _batches(events: list[AuditEvent]) -> list[list[AuditEvent]]:
    """``events`` cut into batches of 1, 2, 3... events, as sessions write them."""
    batches, start, size = [], 0, 1
    while start < len(events):
        batches.append(events[start : start + size])
        start, size = start + size, size + 1
    return batches


async def _audit_ordering(make: _Factory[AuditHookHarness]) -> None:
    async with make() as h:
        hook = _audit_writer(h.hook)
        sids = _session_ids("audit", _AUDIT_SESSIONS)
        logged = {sid: _audit_events(i) for i, sid in enumerate(sids)}

        async def log_one_session(sid: str) -> None:
            for batch in _batches(logged[sid]):
                await hook.log_events(sid, batch)
                await trio.lowlevel.checkpoint()  # let the other sessions interleave

        async with trio.open_nursery() as nursery:
            for sid in sids:
                nursery.start_soon(log_one_session, sid)
        for sid in sids:
            got = list(h.read(sid))
            _check(
                got == logged[sid],
                f"session {sid}: {_first_difference(got, logged[sid])}"
                " (events of concurrent sessions must come back per session, in logged order)",
            )


async def _audit_durable_on_return(make: _Factory[AuditHookHarness]) -> None:
    async with make() as h:
        hook = _audit_writer(h.hook)
        (sid,) = _session_ids("durable", 1)
        events = _audit_events(0)
        written = 0
        for batch in _batches(events):
            await hook.log_events(sid, batch)
            written += len(batch)
            got = list(h.read(sid))
            difference = _first_difference(got, events[:written])
            first, last = written - len(batch), written - 1
            which = f"event #{first}" if first == last else f"events #{first}..#{last}"
            _check(got == events[:written], f"after log_events of {which} returned: {difference}")


async def _audit_unknown_session(make: _Factory[AuditHookHarness]) -> None:
    async with make() as h:
        logged, never = _session_ids("empty", 2)
        await _audit_writer(h.hook).log_events(logged, _audit_events(0, 2)[:1])
        got = list(h.read(never))
        _check(got == [], f"a session that logged nothing reads back {len(got)} events")


def _audit_writer(hook: object) -> AuditHook:
    try:
        return batched_audit(hook)
    except TypeError as exc:
        raise AssertionError(str(exc)) from None


_AUDIT_CHECKS: Final[Sequence[tuple[str, _SubCheck[AuditHookHarness]]]] = (
    (f"{_AUDIT_SESSIONS} concurrent sessions keep their order", _audit_ordering),
    ("an event is readable once log_session returned", _audit_durable_on_return),
    ("a session without events reads back empty", _audit_unknown_session),
)


async def check_audit_hook(
    make: Callable[[], AbstractAsyncContextManager[AuditHookHarness]],
) -> None:
    """Check a :class:`~taleus_bootstrap.AuditHook` implementation against the hook contract.

    ``make()`` must return an async context manager yielding a fresh :class:`AuditHookHarness`;
    it is opened once per sub-check. Asserted:

    * 20 sessions logging 12 events each of every kind in batches of 1, 2, 3... events,
      concurrently (one task per session, interleaved with checkpoints): ``read(session_id)``
      returns exactly that session's events, in logged order, each equal to the logged model;
    * once ``log_events`` has returned, ``read`` sees the whole batch;
    * a session id that logged nothing reads back empty.

    A hook with only ``log_session(session_id, event)`` is checked through
    :func:`~taleus_bootstrap.batched_audit`, as sessions would call it.
    """
    await _run("check_audit_hook", _AUDIT_CHECKS, make)


# -- database hook -------------------------------------------------------------------------

_CREATED_AT: Final = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _request(label: str, role: Role = "stock") -> ProvisionRequest:
    tag = _tag()
    return ProvisionRequest(
        session_id=f"conf-{label}-{tag}",
        tally_id=f"conformance-{label}-{tag}",
        provisioner_role=role,
        stock_party_id=STOCK_PEER,
        foil_party_id=FOIL_PEER,
        created_at=_CREATED_AT,
    )


async def _provision(h: DatabaseHookHarness, request: ProvisionRequest) -> ProvisionResult:
    result = await h.hook.provision(request)
    _check(
        isinstance(result, Provision),
        f"provision must return a ProvisionResult, got {type(result).__name__}",
    )
    return result


def _check_secret_free(text: str, what: str) -> None:
    _check("password=" not in text.lower(), f"{what} holds a 'password=' setting")
    try:
        parts = urlsplit(text)
        password = parts.password if parts.scheme and parts.netloc else None
    except ValueError:  # not a URL (e.g. a bad port): nothing to parse
        password = None
    _check(not password, f"{what} carries a password in its URL userinfo")


async def _db_provision(make: _Factory[DatabaseHookHarness]) -> None:
    async with make() as h:
        _check(isinstance(h.hook, DatabaseHook), "hook lacks the DatabaseHook methods")
        request = _request("prov")
        result = await _provision(h, request)
        want = request.draft_tally()
        for name in Tally.model_fields:
            got_value, want_value = getattr(result.tally, name), getattr(want, name)
            _check(
                got_value == want_value,
                f"provisioned tally's {name} is {got_value!r}, the request's {want_value!r}",
            )
        _check(h.exists(result), "the provisioned database does not exist")
        read = h.read_tally(result)
        _check(read == result.tally, f"the database holds {read!r}, not {result.tally!r}")
        _check_secret_free(result.database.endpoint, "the endpoint")
        _check_secret_free(result.database.credentials_ref, "the credentials_ref")


async def _db_two_provisions(make: _Factory[DatabaseHookHarness]) -> None:
    async with make() as h:
        first = await _provision(h, _request("one"))
        second = await _provision(h, _request("two", role="foil"))
        _check(
            first.database.endpoint != second.database.endpoint,
            f"two tallies share the endpoint {first.database.endpoint!r}",
        )
        _check(h.exists(first) and h.exists(second), "one of two provisioned databases is gone")
        for result in (first, second):
            read = h.read_tally(result)
            _check(read == result.tally, f"the database holds {read!r}, not {result.tally!r}")


async def _db_release(make: _Factory[DatabaseHookHarness]) -> None:
    async with make() as h:
        request = _request("rel")
        result = await _provision(h, request)
        await h.hook.release(result, session_id=request.session_id)
        _check(not h.exists(result), "the database still exists after release")
        read = h.read_tally(result)
        _check(read is None, f"the tally can still be read after release: {read!r}")
        await h.hook.release(result, session_id=request.session_id)  # twice: a no-op
        _check(not h.exists(result), "the database exists again after a second release")


async def _db_commit(make: _Factory[DatabaseHookHarness]) -> None:
    async with make() as h:
        request = _request("commit")
        result = await _provision(h, request)
        await h.hook.commit(result, session_id=request.session_id)
        _check(h.exists(result), "the database is gone after commit")
        read = h.read_tally(result)
        _check(read == result.tally, f"after commit the database holds {read!r}")


async def _db_accept(make: _Factory[DatabaseHookHarness]) -> None:
    async with make() as h:
        tag = _tag()
        theirs = Provision(
            tally=Tally(
                tally_id=f"conformance-theirs-{tag}",
                provisioner_role="foil",
                stock_party_id=STOCK_PEER,
                foil_party_id=FOIL_PEER,
                created_at=_CREATED_AT,
            ),
            database=DatabaseInfo(
                endpoint=f"postgresql://tally_{tag}@other-party.invalid/tallies",
                credentials_ref=f"other-party:tally_{tag}",
            ),
        )
        session_id = f"conf-accept-{tag}"
        verdict: Any = await h.hook.accept(theirs, session_id=session_id)
        _check(
            isinstance(verdict, bool),
            f"accept must return a bool, got {type(verdict).__name__}",
        )
        if verdict:  # an accepted tally is committed when its session completes
            await h.hook.commit(theirs, session_id=session_id)


_DATABASE_CHECKS: Final[Sequence[tuple[str, _SubCheck[DatabaseHookHarness]]]] = (
    ("provision", _db_provision),
    ("two provisions", _db_two_provisions),
    ("release", _db_release),
    ("commit", _db_commit),
    ("accept", _db_accept),
)


async def check_database_hook(
    make: Callable[[], AbstractAsyncContextManager[DatabaseHookHarness]],
) -> None:
    """Check a :class:`~taleus_bootstrap.DatabaseHook` implementation against the hook contract.

    ``make()`` must return an async context manager yielding a fresh :class:`DatabaseHookHarness`;
    it is opened once per sub-check. Asserted:

    * ``provision`` returns a result whose tally matches the request field for field; the
      database exists and holds that tally; neither the endpoint nor the ``credentials_ref``
      holds a ``password=`` setting or a URL userinfo password;
    * two provisions of different tallies get different endpoints, and both exist;
    * after ``release`` the database is gone (``exists`` False, ``read_tally`` None); a second
      ``release`` is a no-op;
    * after ``commit`` the database still exists and holds the tally (``release`` after
      ``commit`` is not part of the contract and is not exercised);
    * ``accept`` of another party's provision returns a bool (whether it accepts is policy);
      if it accepted, ``commit`` of that provision succeeds.
    """
    await _run("check_database_hook", _DATABASE_CHECKS, make)


# -- identity hook -------------------------------------------------------------------------


async def check_identity_hook(
    hook: IdentityHook,
    *,
    identity: Mapping[str, JsonValue] | None = None,
    requirements: Mapping[str, JsonValue] | None = None,
) -> None:
    """Check the part of the :class:`~taleus_bootstrap.IdentityHook` contract every policy shares.

    Identity policies differ, so only this is asserted: ``validate`` returns a ``bool``; the
    pair ``(identity, requirements)`` — one the hook is documented to accept — is accepted; and
    an identity missing any one required key, or an empty identity, is refused. The defaults
    (``{"email": "someone@example.org", "tier": "gold"}`` meeting ``{"email": True,
    "tier": "gold"}``) follow the reference hooks' convention (``True``: any non-empty value;
    anything else: that exact value); pass your own pair (both or neither) if your policy differs.
    """
    if (identity is None) != (requirements is None):
        raise TypeError("check_identity_hook takes both identity and requirements, or neither")
    if identity is None or requirements is None:
        identity = {"email": "someone@example.org", "tier": "gold"}
        requirements = {"email": True, "tier": "gold"}
    if not requirements:
        raise ValueError("check_identity_hook needs non-empty requirements")
    name = "check_identity_hook"
    _check(isinstance(hook, IdentityHook), f"{name}: hook lacks validate")
    session_id = f"conf-identity-{_tag()}"

    async def verdict(candidate: Mapping[str, JsonValue]) -> bool:
        result: Any = await hook.validate(
            candidate, requirements, peer_id=FOIL_PEER, session_id=session_id
        )
        _check(
            isinstance(result, bool),
            f"{name}: validate must return a bool, got {type(result).__name__}",
        )
        return bool(result)

    _check(
        await verdict(identity),
        f"{name}: the identity {dict(identity)!r} was refused for {dict(requirements)!r}",
    )
    _check(not await verdict({}), f"{name}: an empty identity met {dict(requirements)!r}")
    for key in requirements:
        missing = {k: v for k, v in identity.items() if k != key}
        _check(
            not await verdict(missing),
            f"{name}: an identity without the required key {key!r} was accepted",
        )
