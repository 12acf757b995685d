"""The database hook on SQL: real, separate tally databases, tracked so nothing is orphaned.

Every provision is first written to ``provisions`` as ``pending`` (committed before the tally
database is created, so even a crash half-way leaves a row to find), then created. ``commit``
makes it permanent; ``release`` drops it; :meth:`SqlProvisioner.sweep` drops the provisions still
``pending`` after ``provision_ttl`` — what a provision hook that failed after creating, a lost
session or a crashed process left behind. The tally databases themselves are made by a
:class:`TallyFactory` (a SQLite file, a PostgreSQL schema with its own role).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Final, Literal, Protocol

from taleus_bootstrap import DatabaseInfo, Provision, ProvisionRequest, ProvisionResult, Tally
from taleus_bootstrap._lazy import LazyModule

from ._common import Clock, Cursor, SqlDatabase, in_worker_thread, utc_now

if TYPE_CHECKING:
    import trio
else:  # imported on first use: the store's synchronous uses never need it
    trio = LazyModule("trio")

__all__ = ["DEFAULT_PROVISION_TTL", "ProvisionRecord", "SqlProvisioner", "TallyFactory"]

logger = logging.getLogger("taleus_hooks")

DEFAULT_PROVISION_TTL: Final = timedelta(hours=1)
"""How long a provision may stay unacknowledged before :meth:`SqlProvisioner.sweep` removes it.
Keep it well above the session timeout."""

Origin = Literal["local", "remote"]
State = Literal["pending", "committed", "released", "swept"]


class TallyFactory(Protocol):
    """Creates and drops the separate database of one tally (``create`` on the event loop,
    never blocking it; ``drop`` in a worker thread)."""

    def locate(self, tally_id: str) -> DatabaseInfo:
        """Where the tally's database will live: endpoint and credentials reference."""
        ...

    async def create(self, tally: Tally, database: DatabaseInfo) -> None:
        """Create the database with its draft-tally table holding ``tally``; return once it is
        durable."""
        ...

    def drop(self, database: DatabaseInfo) -> None:
        """Remove the database (and anything made for it); a no-op if it does not exist."""
        ...


@dataclass(frozen=True)
class ProvisionRecord:
    """One row of ``provisions``."""

    tally_id: str
    origin: Origin
    state: State
    session_id: str
    provision: Provision
    created_at: float


class SqlProvisioner:
    """Database hook: provisions through a :class:`TallyFactory`, tracked in ``provisions``."""

    def __init__(
        self,
        db: SqlDatabase,
        factory: TallyFactory,
        *,
        clock: Clock = utc_now,
        provision_ttl: timedelta = DEFAULT_PROVISION_TTL,
    ) -> None:
        self._db = db
        self.factory = factory
        self._clock = clock
        self.provision_ttl = provision_ttl

    async def provision(self, request: ProvisionRequest) -> ProvisionResult:
        """Create the tally's database; tracked as ``pending`` until ``commit``.

        The pending record is committed first (so a crash leaves nothing untracked: the sweep
        drops what it names), then the database is created."""
        tally = request.draft_tally()
        result = Provision(tally=tally, database=self.factory.locate(tally.tally_id))
        if not await self._db.run(
            lambda cur: self._insert(cur, result, "local", request.session_id)
        ):
            raise ValueError(f"tally {tally.tally_id!r} was already provisioned here")
        try:
            await self.factory.create(tally, result.database)
        except Exception:
            await self._release_pending(tally.tally_id, "local")
            raise
        return result

    async def release(self, result: ProvisionResult, *, session_id: str) -> None:
        """Drop a pending provision (made here) or forget a pending accepted one. Idempotent;
        a committed tally is never released."""
        await self._release_pending(result.tally.tally_id, None)

    async def accept(self, result: ProvisionResult, *, session_id: str) -> bool:
        """Record the other party's provision (False if this tally id is already known)."""
        return await self._db.run(lambda cur: self._insert(cur, result, "remote", session_id))

    async def commit(self, result: ProvisionResult, *, session_id: str) -> None:
        """Make the session's tally permanent (raises LookupError if it is not pending)."""
        tally_id = result.tally.tally_id
        now = self._clock().timestamp()

        def update(cur: Cursor) -> int:
            cur.execute(
                "UPDATE provisions SET state = 'committed', updated_at = ?"
                " WHERE tally_id = ? AND state = 'pending'",
                (now, tally_id),
            )
            return cur.rowcount

        if await self._db.run(update) < 1:
            raise LookupError(f"no pending provision of tally {tally_id!r}")

    async def sweep(self, *, keep: Collection[str] = ()) -> list[str]:
        """Remove provisions still pending after ``provision_ttl``, but those of the tallies in
        ``keep`` (in doubt: only the inviter can tell their fate); return their tally ids.

        A pending provision whose session recorded its token use (a row in ``redemptions``,
        which ``mark_used`` writes only once the tally is formed) is not stale but a tally whose
        ``commit`` failed: it is committed instead, never swept."""
        cutoff = (self._clock() - self.provision_ttl).timestamp()
        stale_where = "state = 'pending' AND created_at <= ?"
        formed = f"{stale_where} AND session_id IN (SELECT session_id FROM redemptions)"
        formed_ids = await self._db.run(
            lambda cur: sorted({r.session_id for r in self._select(cur, formed, cutoff)})
        )
        if formed_ids:
            await trio.to_thread.run_sync(self.commit_sessions, formed_ids)
            logger.warning("committed %d tally(ies) whose commit had failed", len(formed_ids))
        found = await self._db.run(lambda cur: self._select(cur, stale_where, cutoff))
        stale = [record for record in found if record.tally_id not in keep]
        for record in stale:
            await trio.to_thread.run_sync(self._drop_one, record, "swept")
            logger.warning("swept unacknowledged provision of tally %s", record.tally_id)
        return [record.tally_id for record in stale]

    def stale_sessions(self) -> list[str]:
        """The sessions with a provision still pending after ``provision_ttl``."""
        cutoff = (self._clock() - self.provision_ttl).timestamp()
        stale = self.records("state = 'pending' AND created_at <= ?", cutoff)
        return sorted({record.session_id for record in stale})

    def commit_sessions(self, session_ids: list[str]) -> list[ProvisionRecord]:
        """Commit the pending provisions of ``session_ids`` (sessions known to have completed,
        whose outcome was never recorded) and return them."""
        now = self._clock().timestamp()

        def update(cur: Cursor) -> list[ProvisionRecord]:
            pending = self._pending_of(cur, session_ids)
            for record in pending:
                self._leave_pending(cur, record, "committed", now)
            return pending

        return self._db.transact(update)

    def release_sessions(self, session_ids: list[str]) -> list[ProvisionRecord]:
        """Release the pending provisions of ``session_ids`` (sessions known to be over, e.g.
        those in flight when the node crashed) and return them; committed ones stay."""
        released = self._db.transact(lambda cur: self._pending_of(cur, session_ids))
        for record in released:
            self._drop_one(record, "released")
        return released

    def _pending_of(self, cur: Cursor, session_ids: list[str]) -> list[ProvisionRecord]:
        where = "session_id = ? AND state = 'pending'"
        return [record for sid in session_ids for record in self._select(cur, where, sid)]

    async def _release_pending(self, tally_id: str, origin: Origin | None) -> None:
        """Release the pending provisions of ``tally_id`` (of one origin, or both): as
        :meth:`_drop_one`, with the store's transactions run by :meth:`SqlDatabase.run`, so
        bounded by the caller's deadline (a clean-up must not wait in a worker thread for a
        write lock held elsewhere). Cut short, the provision stays ``pending`` for the sweep."""
        where = "tally_id = ? AND state = 'pending'"
        for record in await self._db.run(lambda cur: self._select(cur, where, tally_id)):
            if origin is not None and record.origin != origin:
                continue
            if record.origin == "local":
                await in_worker_thread(self.factory.drop, record.provision.database)
            leave = functools.partial(
                self._leave_pending, record=record, state="released", now=self._clock().timestamp()
            )
            await self._db.run(leave)

    def _drop_one(self, record: ProvisionRecord, state: State) -> None:
        if record.origin == "local":  # the stored location, not the caller's: drop what we made
            self.factory.drop(record.provision.database)
        now = self._clock().timestamp()
        self._db.transact(lambda cur: self._leave_pending(cur, record, state, now))

    @staticmethod
    def _leave_pending(cur: Cursor, record: ProvisionRecord, state: State, now: float) -> None:
        cur.execute(
            "UPDATE provisions SET state = ?, updated_at = ?"
            " WHERE tally_id = ? AND origin = ? AND state = 'pending'",
            (state, now, record.tally_id, record.origin),
        )

    def _insert(self, cur: Cursor, result: Provision, origin: Origin, session_id: str) -> bool:
        cur.execute(
            "SELECT 1 FROM provisions WHERE tally_id = ? AND origin = ?",
            (result.tally.tally_id, origin),
        )
        if cur.fetchone() is not None:
            return False
        now = self._clock().timestamp()
        cur.execute(
            "INSERT INTO provisions (tally_id, origin, state, session_id, provision, created_at,"
            " updated_at) VALUES (?, ?, 'pending', ?, ?, ?, ?)",
            (result.tally.tally_id, origin, session_id, result.model_dump_json(), now, now),
        )
        return True

    @staticmethod
    def _select(cur: Cursor, where: str, *params: object) -> list[ProvisionRecord]:
        cur.execute(
            "SELECT tally_id, origin, state, session_id, provision, created_at FROM provisions"
            f" WHERE {where} ORDER BY created_at",
            params,
        )
        return [
            ProvisionRecord(
                tally_id=str(t),
                origin=o,
                state=s,
                session_id=str(sid),
                provision=Provision.model_validate_json(p),
                created_at=float(c),
            )
            for t, o, s, sid, p, c in cur.fetchall()
        ]

    # -- inspection (sync) -----------------------------------------------------------------

    def records(self, where: str = "1 = 1", *params: object) -> list[ProvisionRecord]:
        """Rows of ``provisions`` matching a SQL condition (``?`` placeholders)."""
        return self._db.transact(lambda cur: self._select(cur, where, *params))

    def _by_tally(self, where: str) -> dict[str, Provision]:
        return {r.tally_id: r.provision for r in self.records(where)}

    @property
    def tallies(self) -> dict[str, Provision]:
        """Provisioned here and not released (pending or committed)."""
        return self._by_tally("origin = 'local' AND state IN ('pending', 'committed')")

    @property
    def accepted(self) -> dict[str, Provision]:
        """Accepted from the other party and not released (pending or committed)."""
        return self._by_tally("origin = 'remote' AND state IN ('pending', 'committed')")

    @property
    def committed(self) -> dict[str, Provision]:
        """Tallies of completed sessions (either origin)."""
        return self._by_tally("state = 'committed'")

    @property
    def released(self) -> list[str]:
        """Tally ids released or swept, oldest first."""
        return [r.tally_id for r in self.records("state IN ('released', 'swept')")]

    def pending(self) -> list[ProvisionRecord]:
        """Provisions not yet committed nor released."""
        return self.records("state = 'pending'")
