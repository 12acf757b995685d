"""A soak over real libp2p on the SQLite backend: 5 000 sessions, 30 % of them with injected
faults of every kind (hooks that raise, hang or return invalid data; invitees that reset at
random points; garbage frames; wrong tokens), mixed with honest bootstraps of both roles.

Afterwards nothing is running, every session has exactly one terminal audit event, the audit
chain verifies, no provision is left unacknowledged, and the token uses are exactly the
completed sessions. Then everything the system wrote or sent — log records, audit rows, the
frames the invitees received, the errors raised — is scanned for the tokens: zero hits.
``TALEUS_SOAK_SESSIONS`` scales the run (default 5 000).
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import trio
from taleus_hooks.sqlite import SqliteBackend

from taleus_bootstrap import (
    Accepted,
    Ack,
    ManagerConfig,
    encode_frame,
    initiate_bootstrap,
)
from taleus_bootstrap._libp2p import open_bootstrap_stream
from taleus_bootstrap.testing import ManualClock, read_frame

from .adversary import client_hosts, contact_for, rss_bytes, send_raw, serving
from .conftest import NO_RATE_LIMITS, Backend
from .faults import Faulty

pytestmark = pytest.mark.libp2p

SESSIONS = int(os.environ.get("TALEUS_SOAK_SESSIONS", "5000"))
# Each planned hang costs one BOUND. 0.5 s once timed out two honest hook calls on SQLite in a
# full run of the suite on this shared machine (a stall of the machine, not a fault reaching
# them), and 1.0 s one honest SQLite provision in a clean-clone CI run (2026-12-02), so the
# bound leaves an honest call more room than that.
BOUND = 2.0
CONFIG = ManagerConfig(
    **NO_RATE_LIMITS,
    max_concurrent_sessions=500,
    max_session_history=SESSIONS + 100,
    step_timeout=BOUND,
    provision_timeout=BOUND,
    cleanup_timeout=1.0,
    # The store breaker off: a stall of this shared machine longer than BOUND times out the
    # store calls of every session in flight at once (24), enough in a row to open it; the
    # soak is about faults losing nothing, the breaker has its own tests (test_breaker, the
    # stall tests).
    breaker_failures=0,
)
# What each session does: honest bootstraps, or one of the faults.
KINDS = {
    "honest stock": 55,
    "honest foil": 15,
    "hook fault": 14,  # one of the inviter's hooks misbehaves for this session
    "invitee reset": 10,
    "garbage frame": 3,
    "wrong token": 3,
}


ROLE_METHODS = {
    "stock": ["validate", "provision", "mark_used", "commit"],
    "foil": ["validate", "accept", "mark_used", "commit"],
}


class Faults:
    """One planned hook fault per faulty session: which method misbehaves, keyed by token (the
    session's id is learnt from ``validate``, which every later call carries)."""

    def __init__(self) -> None:
        self.plan: dict[str, str] = {}  # token -> method
        self.token_of: dict[str, str] = {}  # session id -> token

    def when(self, method: str) -> Any:
        def planned(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
            if method == "validate":
                self.token_of[kwargs["session_id"]] = args[0]
            if method in ("validate", "mark_used"):
                token = args[0]
            elif method == "provision":
                token = self.token_of.get(args[0].session_id)
            else:
                token = self.token_of.get(kwargs["session_id"])
            return token is not None and self.plan.get(token) == method

        return planned


def faulty_hooks(backend: SqliteBackend, faults: Faults, rng: random.Random) -> dict[str, Any]:
    tokens: Any = backend.tokens
    for method in ("validate", "mark_used"):
        tokens = Faulty(tokens, method, "any", when=faults.when(method), rng=rng)
    database: Any = backend.database
    for method in ("provision", "accept", "commit"):
        database = Faulty(database, method, "any", invalid="yes", when=faults.when(method), rng=rng)
    return {"token": tokens, "database": database}


async def test_soak_with_thirty_percent_faults_loses_nothing(
    backend_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="taleus_bootstrap")
    caplog.set_level(logging.DEBUG, logger="taleus_hooks")
    rng = random.Random(20261123)
    clock = ManualClock()
    backend: SqliteBackend = backend_factory("sqlite", clock=clock)  # closed after the checks
    faults = Faults()
    plan = rng.choices(list(KINDS), weights=list(KINDS.values()), k=SESSIONS)
    minted: list[str] = []
    seen: list[bytes] = []  # what the invitees received, and the errors they saw
    outcomes: Counter[str] = Counter()
    started = time.perf_counter()
    rss_before = rss_bytes()
    async with (
        serving(CONFIG, backend, **faulty_hooks(backend, faults, rng)) as node,
        client_hosts(10) as hosts,
    ):
        invitee = Backend()
        limiter = trio.CapacityLimiter(24)

        async def one(i: int, kind: str) -> None:
            host = hosts[i % len(hosts)]
            role = "foil" if kind == "honest foil" else "stock"
            if kind == "hook fault":
                role = rng.choice(["stock", "foil"])
            token = backend.tokens.mint(role, ttl=timedelta(days=1))  # type: ignore[arg-type]
            minted.append(token)
            if kind == "hook fault":
                faults.plan[token] = rng.choice(ROLE_METHODS[role])
            async with limiter:
                result = await _run(kind, node, host, token, role, invitee, seen, rng)
            outcomes[f"{kind}: {result}"] += 1

        async with trio.open_nursery() as nursery:
            for i, kind in enumerate(plan):
                nursery.start_soon(one, i, kind)
        await node.manager.wait_idle()
        stats = node.manager.statistics()
    elapsed = time.perf_counter() - started

    # Nothing running; every session recorded once, in order, in an intact chain.
    assert stats.active_sessions == 0
    assert stats.sessions_finished == SESSIONS
    # Every honest bootstrap completed, faults all around notwithstanding.
    for honest in ("honest stock", "honest foil"):
        assert outcomes[f"{honest}: completed"] == plan.count(honest), outcomes
    audit = backend.audit
    terminal = Counter(sid for sid, e in audit.events if e.kind == "session_outcome")
    started_ids = {sid for sid, e in audit.events if e.kind == "session_started"}
    assert set(terminal) == started_ids and set(terminal.values()) == {1}
    assert len(started_ids) == SESSIONS
    assert audit.verify().ok
    assert audit.open_sessions() == []
    # Token uses are exactly the completed sessions, once the sweep has settled what a
    # failed post-ack mark_used (reservation held: redeemed) or commit (tally pending:
    # committed) left behind.
    clock.advance(backend.database.provision_ttl + timedelta(seconds=1))
    await backend.sweep()
    assert backend.database.pending() == []
    assert backend.tokens.reservations_held == 0
    completed = {
        sid
        for sid, e in audit.events
        if e.kind == "session_outcome" and e.final_state == "COMPLETED"
    }
    redemptions = backend.tokens.redemptions()
    assert {sid for _, sid in redemptions} == completed
    assert max(Counter(d for d, _ in redemptions).values()) == 1  # one-time, once
    assert set(backend.database.committed) == {
        e.tally_id for _, e in audit.events if e.kind == "session_outcome" and e.tally_id
    }

    # Secrets: no token anywhere the system wrote or sent.
    written = [r.getMessage() for r in caplog.records]
    written += [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    conn = sqlite3.connect(backend.data_dir / "audit.sqlite")
    written += [row[0] for row in conn.execute("SELECT event FROM audit_log")]
    conn.close()
    haystack = "\n".join(written).encode() + b"\n".join(seen)
    leaked = [t for t in minted if t.encode() in haystack]
    assert leaked == []
    print(
        f"\nsoak: {SESSIONS} sessions in {elapsed:.0f} s ({SESSIONS / elapsed:.0f}/s);"
        f" plan {dict(Counter(plan))}; faults planned {dict(Counter(faults.plan.values()))};"
        f" outcomes {dict(sorted(outcomes.items()))}; by state {dict(stats.by_state)};"
        f" RSS +{(rss_bytes() - rss_before) / 2**20:.0f} MiB; scanned {len(haystack)} bytes"
        f" for {len(minted)} tokens: 0 hits"
    )


async def _run(
    kind: str,
    node: Any,
    host: Any,
    token: str,
    role: str,
    invitee: Backend,
    seen: list[bytes],
    rng: Any,
) -> str:
    if kind in ("honest stock", "honest foil", "hook fault"):
        try:
            await initiate_bootstrap(node.link(token, role), host, hooks=invitee.invitee_hooks())
        except Exception as exc:
            seen.append(repr(exc).encode())
            code = getattr(exc, "code", None)
            return type(exc).__name__ + (f" {code.value}" if code is not None else "")
        return "completed"
    if kind == "garbage frame":
        reply = await send_raw(host, node.addr, rng.randbytes(rng.randrange(1, 200)))
        seen.append(reply.raw)
        return "garbage answered"
    contact = contact_for(host, token)
    if kind == "wrong token":
        wrong = contact.model_copy(update={"token": "wrong-" + token[::-1]})
        reply = await send_raw(host, node.addr, encode_frame(wrong))
        seen.append(reply.raw)
        return "wrong token answered"
    # invitee reset: at a random point of the exchange
    point = rng.choice(["before contact", "mid contact", "after accepted", "after ack"])
    stream = await open_bootstrap_stream(host, node.addr)
    try:
        frame = encode_frame(contact)
        if point != "before contact":
            await stream.write(frame if point != "mid contact" else frame[:5])
        if point in ("after accepted", "after ack"):
            accepted = await read_frame(stream)
            seen.append(encode_frame(accepted) if accepted is not None else b"")
            if point == "after ack" and isinstance(accepted, Accepted):
                await stream.write(encode_frame(Ack(session_id=accepted.session_id)))
    except Exception as exc:
        seen.append(repr(exc).encode())
    await stream.reset()
    return "reset " + point
