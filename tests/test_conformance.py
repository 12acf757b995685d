"""The hook conformance kit (``taleus_bootstrap.testing.check_*``): the reference backends pass it,
and deliberately broken hooks make it fail.

To run the kit against another backend, add an entry to ``TOKEN_BACKENDS`` / ``AUDIT_BACKENDS`` /
``DATABASE_BACKENDS`` / ``IDENTITY_BACKENDS``: a function taking the pytest ``request`` (for
fixtures such as ``tmp_path`` or ``pg_dsn`` via ``request.getfixturevalue``) and returning a
harness factory (for identity: the hook). The ``*_harness_factory`` fixtures are parametrized
over those dicts' keys.
"""

from __future__ import annotations

import base64
import pickle
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeAlias

import pytest
import trio
from pydantic import JsonValue
from taleus_hooks.memory import (
    MemoryAuditSink,
    MemoryIdentityValidator,
    MemoryProvisioner,
    MemoryTokenStore,
)

from taleus_bootstrap import (
    AuditEvent,
    IdentityHook,
    Provision,
    ProvisionResult,
    Tally,
    TokenInfo,
    token_digest,
)
from taleus_bootstrap.testing import (
    AuditHookHarness,
    DatabaseHookHarness,
    ManualClock,
    TokenHookHarness,
    check_audit_hook,
    check_database_hook,
    check_identity_hook,
    check_token_hook,
)

TokenFactory: TypeAlias = Callable[[], AbstractAsyncContextManager[TokenHookHarness]]
AuditFactory: TypeAlias = Callable[[], AbstractAsyncContextManager[AuditHookHarness]]
DatabaseFactory: TypeAlias = Callable[[], AbstractAsyncContextManager[DatabaseHookHarness]]


# -- memory harnesses ------------------------------------------------------------------------------


def memory_token_factory(
    store_type: Callable[..., MemoryTokenStore] = MemoryTokenStore,
) -> TokenFactory:
    """Harness factory over a fresh ``store_type(clock=...)`` (a MemoryTokenStore or subclass)."""

    @asynccontextmanager
    async def make() -> AsyncIterator[TokenHookHarness]:
        clock = ManualClock()
        store = store_type(clock=clock)
        yield TokenHookHarness(
            hook=store,
            mint=store.mint,
            revoke=store.revoke,
            clock=clock,
            stored_bytes=lambda: _dump(store),
        )

    return make


def _dump(store: MemoryTokenStore) -> bytes:
    """What a memory store "persists": every attribute of the store, pickled (text as UTF-8,
    bytes as they are)."""
    return pickle.dumps(vars(store))


def memory_audit_factory(
    sink_type: Callable[[], MemoryAuditSink] = MemoryAuditSink,
) -> AuditFactory:
    """Harness factory over a fresh ``sink_type()``; ``read`` is its ``for_session``."""

    @asynccontextmanager
    async def make() -> AsyncIterator[AuditHookHarness]:
        sink = sink_type()
        yield AuditHookHarness(hook=sink, read=sink.for_session)

    return make


def _memory_tally_id(provisioner: MemoryProvisioner, result: ProvisionResult) -> str | None:
    """The tally id the endpoint names (the memory "database" is found through its endpoint)."""
    endpoint = result.database.endpoint
    if not endpoint.startswith(provisioner.endpoint_prefix):
        return None
    return endpoint[len(provisioner.endpoint_prefix) :]


def _as_tally(value: Tally | Provision | None) -> Tally | None:
    return value.tally if isinstance(value, Provision) else value


def _memory_lookup(provisioner: MemoryProvisioner, result: ProvisionResult) -> Tally | None:
    tally_id = _memory_tally_id(provisioner, result)
    if tally_id is None:
        return None
    stores: list[Mapping[str, Tally | Provision]] = [
        provisioner.tallies,
        provisioner.accepted,
        provisioner.committed,
    ]
    for store in stores:
        if tally_id in store:
            return _as_tally(store[tally_id])
    return None


def memory_database_factory(
    provisioner_type: Callable[[], MemoryProvisioner] = MemoryProvisioner,
) -> DatabaseFactory:
    """Harness factory over a fresh ``provisioner_type()``."""

    @asynccontextmanager
    async def make() -> AsyncIterator[DatabaseHookHarness]:
        provisioner = provisioner_type()
        yield DatabaseHookHarness(
            hook=provisioner,
            exists=lambda result: _memory_lookup(provisioner, result) is not None,
            read_tally=lambda result: _memory_lookup(provisioner, result),
        )

    return make


# -- SQLite and PostgreSQL harnesses ---------------------------------------------------------------


def sql_backend_factory(request: pytest.FixtureRequest, kind: str) -> Callable[..., Any]:
    """A context-manager factory opening a fresh SQL backend (own data dir / own schema) on a
    ManualClock; conftest's ``backend_factory`` closes and drops them after the test."""
    make_backend = request.getfixturevalue("backend_factory")

    @asynccontextmanager
    async def make() -> AsyncIterator[tuple[Any, ManualClock]]:
        clock = ManualClock()
        yield make_backend(kind, clock=clock), clock

    return make


def sqlite_stored_bytes(backend: Any) -> bytes:
    """Every byte of every file in the data directory (databases, WAL files, tallies)."""
    return b"".join(p.read_bytes() for p in sorted(backend.data_dir.rglob("*")) if p.is_file())


def postgres_stored_bytes(backend: Any) -> bytes:
    """Every row of every table in the backend's schema, as text."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(backend.db.dsn) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (backend.db.schema,)
        ).fetchall()
        chunks = []
        for (table,) in tables:
            query = sql.SQL("SELECT t::text FROM {}.{} t").format(
                sql.Identifier(backend.db.schema), sql.Identifier(table)
            )
            chunks.extend(row[0] for row in conn.execute(query))
    return "\n".join(chunks).encode()


def sql_token_factory(kind: str) -> Callable[[pytest.FixtureRequest], TokenFactory]:
    dump = sqlite_stored_bytes if kind == "sqlite" else postgres_stored_bytes

    def factory(request: pytest.FixtureRequest) -> TokenFactory:
        open_backend = sql_backend_factory(request, kind)

        @asynccontextmanager
        async def make() -> AsyncIterator[TokenHookHarness]:
            async with open_backend() as (backend, clock):
                yield TokenHookHarness(
                    hook=backend.tokens,
                    mint=backend.tokens.mint,
                    revoke=backend.tokens.revoke,
                    clock=clock,
                    stored_bytes=lambda: dump(backend),
                )

        return make

    return factory


def sql_audit_factory(kind: str) -> Callable[[pytest.FixtureRequest], AuditFactory]:
    def factory(request: pytest.FixtureRequest) -> AuditFactory:
        open_backend = sql_backend_factory(request, kind)

        @asynccontextmanager
        async def make() -> AsyncIterator[AuditHookHarness]:
            async with open_backend() as (backend, _clock):
                yield AuditHookHarness(hook=backend.audit, read=backend.audit.for_session)

        return make

    return factory


def sql_database_factory(kind: str) -> Callable[[pytest.FixtureRequest], DatabaseFactory]:
    def factory(request: pytest.FixtureRequest) -> DatabaseFactory:
        open_backend = sql_backend_factory(request, kind)

        @asynccontextmanager
        async def make() -> AsyncIterator[DatabaseHookHarness]:
            async with open_backend() as (backend, _clock):
                yield DatabaseHookHarness(
                    hook=backend.database,
                    exists=lambda result: backend.read_tally(result) is not None,
                    read_tally=backend.read_tally,
                )

        return make

    return factory


def sql_identity(kind: str) -> Callable[[pytest.FixtureRequest], IdentityHook]:
    def factory(request: pytest.FixtureRequest) -> IdentityHook:
        identity: IdentityHook = request.getfixturevalue("backend_factory")(kind).identity
        return identity

    return factory


# -- backends under test ---------------------------------------------------------------------------

TOKEN_BACKENDS: dict[str, Callable[[pytest.FixtureRequest], TokenFactory]] = {
    "memory": lambda request: memory_token_factory(),
    "sqlite": sql_token_factory("sqlite"),
    "postgres": sql_token_factory("postgres"),
}
AUDIT_BACKENDS: dict[str, Callable[[pytest.FixtureRequest], AuditFactory]] = {
    "memory": lambda request: memory_audit_factory(),
    "sqlite": sql_audit_factory("sqlite"),
    "postgres": sql_audit_factory("postgres"),
}
DATABASE_BACKENDS: dict[str, Callable[[pytest.FixtureRequest], DatabaseFactory]] = {
    "memory": lambda request: memory_database_factory(),
    "sqlite": sql_database_factory("sqlite"),
    "postgres": sql_database_factory("postgres"),
}
IDENTITY_BACKENDS: dict[str, Callable[[pytest.FixtureRequest], IdentityHook]] = {
    "memory": lambda request: MemoryIdentityValidator(),
    "sqlite": sql_identity("sqlite"),
    "postgres": sql_identity("postgres"),
}


@pytest.fixture(params=list(TOKEN_BACKENDS))
def token_harness_factory(request: pytest.FixtureRequest) -> TokenFactory:
    """A token harness factory for each backend in ``TOKEN_BACKENDS``."""
    return TOKEN_BACKENDS[request.param](request)


@pytest.fixture(params=list(AUDIT_BACKENDS))
def audit_harness_factory(request: pytest.FixtureRequest) -> AuditFactory:
    """An audit harness factory for each backend in ``AUDIT_BACKENDS``."""
    return AUDIT_BACKENDS[request.param](request)


@pytest.fixture(params=list(DATABASE_BACKENDS))
def database_harness_factory(request: pytest.FixtureRequest) -> DatabaseFactory:
    """A database harness factory for each backend in ``DATABASE_BACKENDS``."""
    return DATABASE_BACKENDS[request.param](request)


@pytest.fixture(params=list(IDENTITY_BACKENDS))
def identity_hook(request: pytest.FixtureRequest) -> IdentityHook:
    """An identity hook for each backend in ``IDENTITY_BACKENDS``."""
    return IDENTITY_BACKENDS[request.param](request)


async def test_token_hook_conforms(token_harness_factory: TokenFactory) -> None:
    await check_token_hook(token_harness_factory)


async def test_audit_hook_conforms(audit_harness_factory: AuditFactory) -> None:
    await check_audit_hook(audit_harness_factory)


async def test_database_hook_conforms(database_harness_factory: DatabaseFactory) -> None:
    await check_database_hook(database_harness_factory)


async def test_identity_hook_conforms(identity_hook: IdentityHook) -> None:
    await check_identity_hook(identity_hook)


# -- ManualClock -----------------------------------------------------------------------------------


def test_manual_clock() -> None:
    clock = ManualClock()
    start = clock()
    assert start.utcoffset() == timedelta(0)
    assert clock() == start  # does not move by itself
    clock.advance(timedelta(seconds=90))
    assert clock() == start + timedelta(seconds=90)
    given = datetime(2031, 5, 6, 7, 8, tzinfo=UTC)
    assert ManualClock(given)() == given
    with pytest.raises(ValueError, match="UTC"):
        ManualClock(datetime(2031, 5, 6))
    with pytest.raises(ValueError, match="UTC"):
        ManualClock(datetime(2031, 5, 6, tzinfo=timezone(timedelta(hours=2))))
    with pytest.raises(ValueError, match="forward"):
        clock.advance(timedelta(seconds=-1))


def _cases(pairs: list[tuple[Any, str]]) -> list[Any]:
    """``pytest.param(broken, message)`` for each pair, named after the broken hook's class."""
    return [
        pytest.param(
            broken, message, id=(broken if isinstance(broken, type) else type(broken)).__name__
        )
        for broken, message in pairs
    ]


# -- the kit can fail: broken token hooks ----------------------------------------------------------


class NeverReservingStore(MemoryTokenStore):
    """Validates without holding a use back: two sessions both get a one-time token."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.granted: set[tuple[str, str]] = set()

    async def validate(self, token: str, *, session_id: str, peer_id: str) -> TokenInfo | None:
        info = await super().validate(token, session_id=session_id, peer_id=peer_id)
        await super().release(token, session_id=session_id)
        if info is not None:
            self.granted.add((token_digest(token), session_id))
        return info

    async def mark_used(self, token: str, *, session_id: str) -> None:
        record = self.get(token)
        if record is None or (token_digest(token), session_id) not in self.granted:
            raise LookupError("no reservation held by this session")
        self.granted.discard((token_digest(token), session_id))
        record.used += 1

    async def release(self, token: str, *, session_id: str) -> None:
        self.granted.discard((token_digest(token), session_id))


class RacyStore(MemoryTokenStore):
    """Checks, then awaits, then reserves: correct one call at a time, wrong under concurrency."""

    async def validate(self, token: str, *, session_id: str, peer_id: str) -> TokenInfo | None:
        record = self.get(token)
        if record is None or not record.available(self._clock()):
            return None
        await trio.lowlevel.checkpoint()
        record.reservations.add(session_id)
        return TokenInfo(
            inviter_role=record.inviter_role,
            expires_at=record.expires_at,
            identity_requirements=record.identity_requirements,
        )


class PlainTextStore(MemoryTokenStore):
    """Keeps every minted token in the clear."""

    def mint(self, inviter_role: Any, **kwargs: Any) -> str:
        token = super().mint(inviter_role, **kwargs)
        self.plain = [*getattr(self, "plain", []), token]
        return token


class RawBytesStore(MemoryTokenStore):
    """Keeps every minted token's decoded bytes (base64url hides nothing)."""

    def mint(self, inviter_role: Any, **kwargs: Any) -> str:
        token = super().mint(inviter_role, **kwargs)
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        self.raw = [*getattr(self, "raw", []), raw]
        return token


class LaxMarkUsedStore(MemoryTokenStore):
    """``mark_used`` without a reservation silently succeeds."""

    async def mark_used(self, token: str, *, session_id: str) -> None:
        record = self.get(token)
        if record is not None and session_id in record.reservations:
            await super().mark_used(token, session_id=session_id)


class GenerousReleaseStore(MemoryTokenStore):
    """``release`` after ``mark_used`` gives the use back."""

    async def mark_used(self, token: str, *, session_id: str) -> None:
        await super().mark_used(token, session_id=session_id)
        self._committed = {*getattr(self, "_committed", set()), (token_digest(token), session_id)}

    async def release(self, token: str, *, session_id: str) -> None:
        await super().release(token, session_id=session_id)
        key = (token_digest(token), session_id)
        record = self.get(token)
        if record is not None and key in getattr(self, "_committed", set()):
            record.used -= 1


class NoExpiryStore(MemoryTokenStore):
    """Ignores ``ttl``."""

    def mint(self, inviter_role: Any, **kwargs: Any) -> str:
        token = super().mint(inviter_role, **kwargs)
        record = self.get(token)
        assert record is not None
        record.expires_at = None
        return token


class IgnoresRevocationStore(MemoryTokenStore):
    """``revoke`` answers True but changes nothing."""

    def revoke(self, token: str) -> bool:
        return self.get(token) is not None


class DropsRequirementsStore(MemoryTokenStore):
    """Forgets identity requirements (a token with requirements comes back without them)."""

    def mint(self, inviter_role: Any, **kwargs: Any) -> str:
        kwargs["identity_requirements"] = None
        return super().mint(inviter_role, **kwargs)


@pytest.mark.parametrize(
    ("store_type", "message"),
    _cases(
        [
            (NeverReservingStore, "expected None"),
            (RacyStore, "concurrent validations reserved a one-time token"),
            (PlainTextStore, r"stored in the clear \(UTF-8 text\)"),
            (RawBytesStore, r"stored in the clear \(base64url-decoded bytes\)"),
            (LaxMarkUsedStore, "expected LookupError"),
            (GenerousReleaseStore, "release after mark_used gave the use back"),
            (NoExpiryStore, "expires_at is None"),
            (IgnoresRevocationStore, "revoked token"),
            (DropsRequirementsStore, "identity_requirements None"),
        ]
    ),
)
async def test_broken_token_hook_fails(store_type: type[MemoryTokenStore], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        await check_token_hook(memory_token_factory(store_type))


# -- the kit can fail: broken audit hooks ----------------------------------------------------------


class ReorderingSink(MemoryAuditSink):
    """Stores each new event first: reads come back newest first."""

    async def log_session(self, session_id: str, event: AuditEvent) -> None:
        self.events.insert(0, (session_id, event))


class BufferingSink(MemoryAuditSink):
    """Keeps events in a buffer, stored only every 5th call: not durable on return."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer: list[tuple[str, AuditEvent]] = []

    async def log_session(self, session_id: str, event: AuditEvent) -> None:
        self.buffer.append((session_id, event))
        if len(self.buffer) >= 5:
            self.events.extend(self.buffer)
            self.buffer.clear()


class LossySink(MemoryAuditSink):
    """Keeps events only as their JSON minus the timestamps' microseconds (not the logged model)."""

    async def log_session(self, session_id: str, event: AuditEvent) -> None:
        await super().log_session(
            session_id, event.model_copy(update={"at": event.at.replace(microsecond=0)})
        )


class SharedSessionSink(MemoryAuditSink):
    """Returns every session's events for any session id."""

    def for_session(self, session_id: str) -> list[AuditEvent]:
        return [event for _, event in self.events]


@pytest.mark.parametrize(
    ("sink_type", "message"),
    _cases(
        [
            (ReorderingSink, "in logged order"),
            (BufferingSink, "after log_events of event #0 returned: 0 events read back"),
            (LossySink, "event #0 read back as"),
            (SharedSessionSink, "events read back"),
        ]
    ),
)
async def test_broken_audit_hook_fails(sink_type: type[MemoryAuditSink], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        await check_audit_hook(memory_audit_factory(sink_type))


# -- the kit can fail: broken database hooks -------------------------------------------------------


class NoReleaseProvisioner(MemoryProvisioner):
    """``release`` does nothing."""

    async def release(self, result: ProvisionResult, *, session_id: str) -> None:
        return None


class PasswordInEndpointProvisioner(MemoryProvisioner):
    """Puts a password in the endpoint's URL userinfo."""

    def __init__(self) -> None:
        super().__init__(endpoint_prefix="postgresql://tally:hunter2@db.example/")


class PasswordInRefProvisioner(MemoryProvisioner):
    """Puts a ``password=`` setting in the credentials reference."""

    async def provision(self, request: Any) -> ProvisionResult:
        result = await super().provision(request)
        database = result.database.model_copy(update={"credentials_ref": "user=t password=s3cret"})
        return result.model_copy(update={"database": database})


class SharedEndpointProvisioner(MemoryProvisioner):
    """Puts every tally in the same database: the last one provisioned wins."""

    async def provision(self, request: Any) -> ProvisionResult:
        result = await super().provision(request)
        self.tallies["shared"] = self.tallies.pop(result.tally.tally_id)
        database = result.database.model_copy(update={"endpoint": self.endpoint_prefix + "shared"})
        return result.model_copy(update={"database": database})


class WrongTallyProvisioner(MemoryProvisioner):
    """Swaps the parties of the provisioned tally."""

    async def provision(self, request: Any) -> ProvisionResult:
        swapped = request.model_copy(
            update={
                "stock_party_id": request.foil_party_id,
                "foil_party_id": request.stock_party_id,
            }
        )
        return await super().provision(swapped)


class CommitDropsProvisioner(MemoryProvisioner):
    """``commit`` forgets the tally instead of keeping it."""

    async def commit(self, result: ProvisionResult, *, session_id: str) -> None:
        self.tallies.pop(result.tally.tally_id, None)
        self.accepted.pop(result.tally.tally_id, None)


class NonBoolAcceptProvisioner(MemoryProvisioner):
    """``accept`` returns None instead of a bool."""

    async def accept(self, result: ProvisionResult, *, session_id: str) -> Any:
        await super().accept(result, session_id=session_id)
        return None


@pytest.mark.parametrize(
    ("provisioner_type", "message"),
    _cases(
        [
            (NoReleaseProvisioner, "still exists after release"),
            (PasswordInEndpointProvisioner, "endpoint carries a password"),
            (PasswordInRefProvisioner, "credentials_ref holds a 'password=' setting"),
            (SharedEndpointProvisioner, "two tallies share the endpoint"),
            (WrongTallyProvisioner, "stock_party_id"),
            (CommitDropsProvisioner, "the database is gone after commit"),
            (NonBoolAcceptProvisioner, "accept must return a bool"),
        ]
    ),
)
async def test_broken_database_hook_fails(
    provisioner_type: type[MemoryProvisioner], message: str
) -> None:
    with pytest.raises(AssertionError, match=message):
        await check_database_hook(memory_database_factory(provisioner_type))


# -- the kit can fail: broken identity hooks -------------------------------------------------------


class AcceptsAnyone:
    async def validate(
        self,
        identity: Mapping[str, JsonValue],
        requirements: Mapping[str, JsonValue],
        *,
        peer_id: str,
        session_id: str,
    ) -> bool:
        return True


class TruthyNotBool:
    async def validate(
        self,
        identity: Mapping[str, JsonValue],
        requirements: Mapping[str, JsonValue],
        *,
        peer_id: str,
        session_id: str,
    ) -> Any:
        return len(identity)


class IgnoresSecondKey:
    """Checks only the first requirement."""

    async def validate(
        self,
        identity: Mapping[str, JsonValue],
        requirements: Mapping[str, JsonValue],
        *,
        peer_id: str,
        session_id: str,
    ) -> bool:
        first = next(iter(requirements))
        return bool(identity.get(first))


@pytest.mark.parametrize(
    ("hook", "message"),
    _cases(
        [
            (AcceptsAnyone(), "an empty identity met"),
            (TruthyNotBool(), "validate must return a bool, got int"),
            (IgnoresSecondKey(), "without the required key 'tier' was accepted"),
        ]
    ),
)
async def test_broken_identity_hook_fails(hook: Any, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        await check_identity_hook(hook)


async def test_identity_check_takes_a_documented_pair() -> None:
    await check_identity_hook(
        MemoryIdentityValidator(), identity={"country": "NZ"}, requirements={"country": "NZ"}
    )
    with pytest.raises(AssertionError, match="was refused"):
        await check_identity_hook(
            MemoryIdentityValidator(), identity={"country": "AU"}, requirements={"country": "NZ"}
        )
    with pytest.raises(ValueError, match="non-empty requirements"):
        await check_identity_hook(MemoryIdentityValidator(), identity={}, requirements={})


# -- the kit does not rely on ``assert`` -----------------------------------------------------------


def test_kit_fails_under_python_O() -> None:
    """Under ``python -O`` (asserts stripped) a broken hook still fails the kit."""
    script = textwrap.dedent(
        """
        import trio
        from taleus_bootstrap.testing import check_identity_hook

        class AcceptsAnyone:
            async def validate(self, identity, requirements, *, peer_id, session_id):
                return True

        try:
            trio.run(check_identity_hook, AcceptsAnyone())
        except AssertionError as exc:
            print("failed as it should:", exc)
        else:
            raise SystemExit("the kit passed a broken hook under -O")
        """
    )
    done = subprocess.run(
        [sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "failed as it should" in done.stdout
