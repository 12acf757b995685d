"""PostgreSQL outages: the pool reconnects by itself once the server is back, calls made while it
is down fail within their deadline (and fast, once it is known to be down); and the stall target
under load.

The load test stops the server of a serving node for 10 s, then starts it again, while ten
invitees keep bootstrapping (memory streams, a real SessionManager on a PostgresBackend). The
servers here are the module's own (:func:`~tests.pgserver.own_postgres_server`), so stopping them
disturbs no other test.

The stall target, with ``session_timeout = 3 s`` and ``breaker_open_s = 1 s`` (small, so that the
test is short; ``step_timeout = 1 s``, ``provision_timeout = 2 s``, the rest as shipped):

* every session ends (its ``handle_stream`` returns, clean-up included, with the shipped
  ``cleanup_timeout`` of 5 s) within ``session_timeout + 1 s``;
* once the store breaker opens, new streams get ``busy`` within 1 s (an eleventh invitee opens
  a stream every 0.1 s during the outage, so that streams keep coming);
* a bootstrap completes within 2 s of the server being back;
* after the node's restart path (``recover()``, as ``serve`` runs it at start): token uses
  equal the completed sessions, no reservation held, no provision pending, no session left
  open, one outcome per session, and the audit chain verifies.

The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
from psycopg_pool import PoolTimeout
from taleus_hooks.postgres import UNREACHABLE_WAIT, PostgresBackend, PostgresDatabase

from taleus_bootstrap import (
    BootstrapLink,
    BootstrapRejected,
    ManagerConfig,
    RejectionCode,
    SessionManager,
    run_invitee,
)
from taleus_bootstrap.testing import memory_stream_pair

from .conftest import INVITEE_PEER, INVITER_PEER, NO_RATE_LIMITS, Backend
from .pgserver import TEST_CREDENTIALS_KEY as KEY
from .pgserver import OwnServer, own_postgres_server

pytestmark = pytest.mark.postgres

ADDR = f"/ip4/127.0.0.1/tcp/4001/p2p/{INVITER_PEER}"
WORKERS = 10
OUTAGE = 10.0
SESSION_TIMEOUT = 3.0
BREAKER_OPEN_S = 1.0
CONFIG = ManagerConfig(
    session_timeout=SESSION_TIMEOUT,
    step_timeout=1.0,
    provision_timeout=2.0,
    breaker_open_s=BREAKER_OPEN_S,
    **NO_RATE_LIMITS,
    max_session_history=100_000,
)


@pytest.fixture(scope="module")
def own_server() -> Iterator[OwnServer]:
    with own_postgres_server() as server:
        yield server


def one(cur: Any) -> Any:
    cur.execute("SELECT 1")
    return cur.fetchone()


async def calls_failing(db: PostgresDatabase, n: int) -> int:
    """How many of ``n`` calls (each with a 2 s deadline) raise."""
    failed = 0
    for _ in range(n):
        with trio.fail_after(3):  # a call never outlives its deadline by much
            try:
                with trio.move_on_after(2):
                    assert tuple(await db.run(one)) == (1,)
            except Exception:
                failed += 1
    return failed


@pytest.mark.parametrize("check", [True, False])
async def test_after_a_restart_dead_connections_are_replaced_not_handed_out(
    own_server: OwnServer, check: bool
) -> None:
    db = PostgresDatabase(own_server.dsn, "public", min_size=4, max_size=4, check=check)
    try:
        assert await calls_failing(db, 4) == 0
        await trio.to_thread.run_sync(own_server.stop)
        await trio.to_thread.run_sync(own_server.start)
        # The pool's four connections died with the server. Checked as they leave the pool,
        # they are replaced: no call fails. Unchecked, the first call takes a dead one.
        failed = await calls_failing(db, 8)
        assert failed == 0 if check else failed >= 1
    finally:
        db.close()


async def test_while_the_server_is_down_calls_fail_fast_and_then_it_reconnects(
    own_server: OwnServer,
) -> None:
    db = PostgresDatabase(own_server.dsn, "public", max_size=4)
    try:
        assert await calls_failing(db, 2) == 0
        await trio.to_thread.run_sync(own_server.stop)
        took = []
        for _ in range(6):
            started = trio.current_time()
            with trio.move_on_after(2.0), pytest.raises(PoolTimeout, match="unreachable"):
                await db.run(one)
            took.append(trio.current_time() - started)
            await trio.sleep(0.5)  # longer than the pool's reconnect_timeout: it gave up
        assert db.unreachable
        # The first call finds out (its connection is dead, a new one is refused); once that
        # is known, each call gives up after UNREACHABLE_WAIT, well before its 2 s deadline.
        assert max(took) < 1.5
        assert max(took[1:]) < UNREACHABLE_WAIT + 0.25
        await trio.to_thread.run_sync(own_server.start)
        back = trio.current_time()
        with trio.move_on_after(2.0):
            assert tuple(await db.run(one)) == (1,)  # the pool never gave up for good
        assert trio.current_time() - back < 1.0
        assert not db.unreachable
        print(
            f"\ncalls while down took {', '.join(f'{t:.2f}' for t in took)} s;"
            f" first call after the start {trio.current_time() - back:.3f} s"
        )
    finally:
        db.close()


async def test_the_maintenance_sweep_outlives_an_outage(
    own_server: OwnServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A sweep that fails while the server is down is logged; the next one, once it is back,
    does its work (here: reclaims a reservation whose lease ran out)."""
    lease = timedelta(seconds=1)
    with PostgresBackend(
        own_server.dsn, schema="maintenance", reservation_lease=lease, credentials_key=KEY
    ) as backend:
        token = backend.tokens.mint("stock")
        assert await backend.tokens.validate(token, session_id="s-1", peer_id=INVITEE_PEER)
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.run_maintenance, 0.2)
            await trio.to_thread.run_sync(own_server.stop)
            await trio.sleep(1.5)  # sweeps fail; the lease runs out meanwhile
            assert "maintenance sweep failed (PoolTimeout" in caplog.text
            await trio.to_thread.run_sync(own_server.start)
            for _ in range(50):  # a sweep every 0.2 s: the first after the start reclaims it
                held = await trio.to_thread.run_sync(lambda: backend.tokens.reservations_held)
                if held == 0:
                    break
                await trio.sleep(0.1)
            assert held == 0
            nursery.cancel_scope.cancel()


@dataclass
class Attempt:
    """One stream a worker opened: when, and how each side ended."""

    started: float
    ended: float  # the inviter's handle_stream returned (the session's clean-up included)
    invitee_ended: float
    session_id: str  # "" when refused at admission
    result: str  # "completed", or the rejection code the invitee got
    tally_id: str | None

    def completed_after(self, t: float) -> bool:
        return self.result == "completed" and self.invitee_ended > t


class Lines(logging.Handler):
    """What the node logged (WARNING and above), and when the store breaker opened
    (``time.monotonic()``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.opened: list[float] = []
        self.by_logger: Counter[str] = Counter()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:  # also from the pool's threads
        self.by_logger[record.name] += 1
        self.messages.append(record.getMessage())
        if record.getMessage().startswith("store breaker open"):
            self.opened.append(time.monotonic())


async def bootstrap(manager: SessionManager, link: BootstrapLink, invitee: Backend) -> Attempt:
    """One bootstrap over a memory stream; the inviter's side run by ``manager``."""
    ours, theirs = memory_stream_pair()
    started = time.monotonic()
    result, tally_id, records = "completed", None, []

    async def inviter() -> None:
        records.append(await manager.handle_stream(theirs, INVITEE_PEER))
        records.append(time.monotonic())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(inviter)
        try:
            outcome = await run_invitee(
                ours,
                link,
                hooks=invitee.invitee_hooks(),
                local_peer_id=INVITEE_PEER,
                remote_peer_id=INVITER_PEER,
                responder_addr=ADDR,
            )
            tally_id = outcome.tally.tally_id
        except BootstrapRejected as exc:
            result = str(exc.code)
        invitee_ended = time.monotonic()
    record, ended = records
    return Attempt(started, ended, invitee_ended, record.session_id, result, tally_id)


@pytest.mark.audits_itself  # its server is gone when it returns
async def test_a_10s_postgres_outage_under_load_meets_the_stall_target(
    own_server: OwnServer,
) -> None:
    backend = PostgresBackend(own_server.dsn, schema="outage", owner="node-a", credentials_key=KEY)
    try:
        await _outage_under_load(own_server, backend)
    finally:
        backend.close()


async def _outage_under_load(server: Any, backend: PostgresBackend) -> None:
    invitee = Backend()
    expires = datetime.now(UTC) + timedelta(hours=1)
    links = [
        BootstrapLink(
            responder_addrs=[ADDR],
            token=backend.tokens.mint(role, uses=None),
            expires_at=expires,
            inviter_role=role,
        )
        for role in ["stock", "foil"] * (WORKERS // 2) + ["foil"]  # the last: the prober's
    ]
    lines = Lines()
    logging.getLogger().addHandler(lines)
    attempts: list[Attempt] = []
    stop = trio.Event()
    warmed_up = trio.Event()
    served_again = trio.Event()
    up = math.inf  # when the server was back
    manager = SessionManager(None, backend.hooks(), CONFIG, local_peer_id=INVITER_PEER)

    async def one_attempt(link: BootstrapLink) -> Attempt:
        attempt = await bootstrap(manager, link, invitee)
        attempts.append(attempt)
        if attempt.completed_after(up):
            served_again.set()
        return attempt

    async def worker(link: BootstrapLink) -> None:
        while not stop.is_set():
            attempt = await one_attempt(link)
            if attempt.result == "completed" and len(attempts) >= 3 * WORKERS:
                warmed_up.set()
            if attempt.result != "completed":
                await trio.sleep(0.05)

    async def prober(link: BootstrapLink, until: trio.Event) -> None:
        """A new stream every 0.1 s, whatever became of the previous ones: what admission
        answers, whenever the breaker opens."""
        async with trio.open_nursery() as probes:
            while not until.is_set():
                probes.start_soon(one_attempt, link)
                await trio.sleep(0.1)

    server_back = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            async with trio.open_nursery() as load:
                for link in links[:WORKERS]:
                    load.start_soon(worker, link)
                with trio.fail_after(20):
                    await warmed_up.wait()
                stop_begun = time.monotonic()
                load.start_soon(prober, links[WORKERS], server_back)
                await trio.to_thread.run_sync(server.stop)
                down = time.monotonic()
                await trio.sleep(OUTAGE)
                await trio.to_thread.run_sync(server.start)
                up = time.monotonic()
                server_back.set()
                with trio.fail_after(10):
                    await served_again.wait()
                await trio.sleep(1.0)  # serving as before
                stop.set()
            await manager.aclose()
    finally:
        logging.getLogger().removeHandler(lines)

    # The node's restart path: what the outage left open is closed, as serve does at start.
    recovered = await backend.recover()

    sessions = [a for a in attempts if a.session_id]
    busy = [a for a in attempts if a.result == RejectionCode.BUSY]
    overrun = max(a.ended - a.started for a in sessions) - SESSION_TIMEOUT
    in_outage = [a for a in sessions if a.ended >= stop_begun and a.started <= up]
    opened = [t for t in lines.opened if stop_begun <= t <= up]
    assert opened, "the store breaker never opened during the outage"
    first_busy = min((a.invitee_ended for a in busy if a.invitee_ended >= opened[0]), default=None)
    assert first_busy is not None
    busy_after_open = first_busy - opened[0]
    busy_reply = max(a.invitee_ended - a.started for a in busy)
    # Every stream that came while the breaker was open (before its first probe) got busy.
    while_open = [a for a in attempts if opened[0] < a.started < opened[0] + BREAKER_OPEN_S - 0.05]
    service_back = min(a.invitee_ended for a in attempts if a.completed_after(up)) - up
    by_result = Counter(a.result for a in attempts)

    # What the store holds, once recovered.
    audit = backend.audit
    report = await trio.to_thread.run_sync(audit.verify)
    events = await trio.to_thread.run_sync(lambda: audit.events)
    open_left = await trio.to_thread.run_sync(audit.open_sessions)
    held = await trio.to_thread.run_sync(lambda: backend.tokens.reservations_held)
    pending = await trio.to_thread.run_sync(backend.database.pending)
    redemptions = await trio.to_thread.run_sync(backend.tokens.redemptions)
    uses = sum(r.used for r in await trio.to_thread.run_sync(backend.tokens.records))
    committed = set(await trio.to_thread.run_sync(lambda: backend.database.committed))
    outcomes: dict[str, list[Any]] = {}
    rejections: dict[str, set[Any]] = {}
    logged: set[str] = set()
    for session_id, event in events:
        logged.add(session_id)
        if event.kind == "session_outcome":
            outcomes.setdefault(session_id, []).append(event)
        elif event.kind == "rejection":
            rejections.setdefault(session_id, set()).add(event.code)
    completions = {  # completed, or found completed by the recovery
        sid
        for sid, found in outcomes.items()
        if found[-1].final_state == "COMPLETED"
        or (found[-1].final_state == "ABORTED" and found[-1].tally_id is not None)
    }
    # The sessions the outage touched whose outcome the node could not write: closed ABORTED
    # by the recovery, or never logged at all (not even their start: nothing was done for them).
    aborted = set(recovered.sessions_aborted)
    unlogged = {a.session_id for a in sessions} - logged
    # A stock invitee holds its tally once it has sent its ack; a node that could not record
    # that (the store down) recovers the session as not completed (docs/operations.md).
    not_committed = [a for a in attempts if a.tally_id is not None and a.tally_id not in committed]

    print(
        f"\nPostgreSQL outage of {up - down:.1f} s under load ({WORKERS} invitees):"
        f" sessions {len(sessions)} ({len(in_outage)} touched by the outage), busy {len(busy)},"
        f" by result {dict(by_result)}"
        f"\n  longest session {SESSION_TIMEOUT + overrun:.2f} s: {overrun:+.2f} s past"
        f" session_timeout ({SESSION_TIMEOUT:g} s)"
        f"\n  breaker opened {opened[0] - down:.2f} s after the server was down"
        f" ({len(opened)} opening(s)); first busy {busy_after_open:.3f} s after it opened;"
        f" {len(while_open)} stream(s) came while it was open,"
        f" {sum(a.result == RejectionCode.BUSY for a in while_open)} got busy;"
        f" slowest busy reply {busy_reply * 1000:.0f} ms"
        f"\n  first bootstrap completed {service_back:.2f} s after the server was back"
        f"\n  recovery: {len(recovered.sessions_aborted)} session(s) closed ABORTED,"
        f" {recovered.reservations_settled} reservation(s) settled,"
        f" {len(recovered.provisions_released)} provision(s) released;"
        f" {len(unlogged)} session(s) never logged (their start could not be written);"
        f" {len(not_committed)} tally(ies) formed by an invitee and not committed"
        f"\n  token uses {uses} = redemptions {len(redemptions)} = completions {len(completions)};"
        f" audit rows {report.rows}"
        f"\n  log lines (WARNING and above) by logger: {dict(lines.by_logger)}"
    )

    # The stall target.
    assert overrun <= 1.0
    assert busy_after_open <= 1.0
    assert while_open and all(a.result == RejectionCode.BUSY for a in while_open)
    assert busy_reply <= 1.0
    assert service_back <= 2.0
    # Nothing lost, nothing used twice.
    assert report.ok, report
    assert open_left == []
    assert held == 0
    assert pending == []
    assert all(len(found) == 1 for found in outcomes.values()), outcomes
    assert set(outcomes) == logged - {"admission"}
    assert uses == len(redemptions) == len(completions)
    assert {sid for _, sid in redemptions} == completions
    # Each session's outcome is the one its node recorded, unless the outage kept it from
    # being written; only sessions the outage touched are closed by the recovery or unlogged.
    touched = {a.session_id for a in in_outage}
    assert aborted | unlogged <= touched
    for record in manager.history():
        if record.session_id in unlogged:
            assert record.final_state != "COMPLETED"
        if record.session_id in aborted | unlogged:
            continue
        [outcome] = outcomes[record.session_id]
        assert (outcome.final_state, outcome.code) == (record.final_state, record.code)
        assert record.code is None or record.code in rejections[record.session_id]
    # Every tally an invitee formed is committed by the node, unless its session was aborted.
    assert all(a.session_id in aborted for a in not_committed)
    assert sessions[-1].result == "completed"
    # The operator sees the outage begin and end, once each; no secret in what was logged.
    unreachable = [m for m in lines.messages if m.startswith("PostgreSQL unreachable")]
    back_again = [m for m in lines.messages if m.startswith("PostgreSQL reachable again")]
    assert len(unreachable) == len(back_again) == 1
    assert not any(link.token in m for m in lines.messages for link in links)
