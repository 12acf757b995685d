"""Shared fixtures: in-memory reference hooks, managers checked for leaks, libp2p hosts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from taleus_hooks.memory import (
    MemoryAuditSink,
    MemoryBackend,
)
from taleus_hooks.sqlite import SqlAuditLog

from taleus_bootstrap import (
    ManagerConfig,
    SessionManager,
    new_bootstrap_host,
    running_host,
)

from .pgserver import TEST_CREDENTIALS_KEY, drop_schema, fresh_schema, postgres_server

# A syntactically valid peer id for the inviter in memory-stream tests.
INVITER_PEER = "12D3KooWDSzhRqU2agPZGfN42irroipZotydBWxLhLoJP9ATU7dq"
INVITEE_PEER = "12D3KooWDUuAp3AUT2pT3UiMHbgqsdtSsvD7Et8Hoc6Rzp3yoc56"


Backend = MemoryBackend
"""One party's reference memory hooks (``tokens``, ``provisioner``, ``identity``, ``audit``)."""


BACKEND_KINDS = ("memory", "sqlite", "postgres")

NO_RATE_LIMITS: dict[str, Any] = {
    "peer_rate": 1_000_000,
    "peer_burst": 1_000_000,
    "global_rate_per_s": 1_000_000.0,
    "global_burst": 1_000_000,
}
"""``ManagerConfig`` options that keep the rate limiters out of a load test's way."""


async def wait_for_count(
    count: Callable[[], int], at_least: int, *, within: float, what: str
) -> None:
    """Poll ``count`` (a blocking call: it runs in a worker thread) until it reaches
    ``at_least``; fail naming ``what`` after ``within`` seconds. For counts that another thread
    or process makes, which offer nothing to wait on."""
    for _ in range(round(within / 0.05)):
        if await trio.to_thread.run_sync(count) >= at_least:
            return
        await trio.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} {what} after {within:g} s")


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A superuser DSN of the session's PostgreSQL (embedded, or ``TALEUS_TEST_PG_DSN``)."""
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Factory: ``make(kind, **options)`` gives a fresh memory / SQLite / PostgreSQL backend
    (SQLite in its own data dir, PostgreSQL in its own schema); all closed and dropped after."""
    made: list[tuple[Any, str | None]] = []

    def make(kind: str, **options: Any) -> Any:
        if kind == "memory":
            return Backend(**options)
        if kind == "sqlite":
            from taleus_hooks.sqlite import SqliteBackend

            sqlite_backend = SqliteBackend(tmp_path / f"node{len(made)}", **options)
            made.append((sqlite_backend, None))
            return sqlite_backend
        if kind == "postgres":
            from taleus_hooks.postgres import PostgresBackend

            dsn, schema = request.getfixturevalue("pg_dsn"), fresh_schema()
            pg_backend = PostgresBackend(
                dsn, schema=schema, credentials_key=TEST_CREDENTIALS_KEY, **options
            )
            made.append((pg_backend, schema))
            return pg_backend
        raise ValueError(kind)

    yield make
    for backend, schema in made:
        backend.close()
        if schema is not None:
            drop_schema(request.getfixturevalue("pg_dsn"), schema)


@pytest.fixture
def inviter_backend() -> Backend:
    return Backend()


@pytest.fixture
def invitee_backend() -> Backend:
    return Backend()


@pytest.fixture
def managers() -> list[SessionManager]:
    """Managers a test starts itself (all are checked by ``_every_session_accounted_for``)."""
    return []


@pytest.fixture(autouse=True)
def _every_session_accounted_for(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    backend_factory: Callable[..., Any],
) -> Iterator[None]:
    """After every test, every SessionManager it created has zero active sessions, and (with an
    audit hook that can be read back) each finished session has exactly one outcome event
    matching its record and a rejection event carrying its code. (It asks for
    ``backend_factory`` so that the backends a test made are closed only after this check.)

    A test marked ``audits_itself`` (its store is its own and gone when it returns) makes the
    audit check itself, before it closes its store."""
    created: list[SessionManager] = []
    original = SessionManager.__init__

    def tracking_init(self: SessionManager, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(SessionManager, "__init__", tracking_init)
    yield
    audits_itself = request.node.get_closest_marker("audits_itself") is not None
    for manager in created:
        assert manager.statistics().active_sessions == 0
        if audits_itself:
            continue
        audit = manager.hooks.audit
        if not isinstance(audit, MemoryAuditSink | SqlAuditLog):
            continue
        for record in manager.history():
            events = audit.for_session(record.session_id)
            outcomes = [e for e in events if e.kind == "session_outcome"]
            assert len(outcomes) == 1, record
            assert outcomes[0].final_state == record.final_state
            assert outcomes[0].code == record.code
            assert events[-1] is outcomes[0]
            if record.code is not None:
                assert record.code in {e.code for e in events if e.kind == "rejection"}


@pytest.fixture
async def memory_manager(
    nursery: trio.Nursery, inviter_backend: Backend, managers: list[SessionManager]
) -> AsyncIterator[Callable[..., Any]]:
    """Factory: a running host-less manager fed with memory streams."""

    async def start(config: ManagerConfig | None = None, **hook_overrides: Any) -> SessionManager:
        manager = SessionManager(
            None, inviter_backend.hooks(**hook_overrides), config, local_peer_id=INVITER_PEER
        )
        await nursery.start(manager.run)
        managers.append(manager)
        return manager

    yield start


@pytest.fixture
async def host_pair() -> AsyncIterator[tuple[Any, Any]]:
    """Two running libp2p hosts on 127.0.0.1: (inviter, invitee)."""
    async with running_host(new_bootstrap_host()) as a, running_host(new_bootstrap_host()) as b:
        yield a, b
