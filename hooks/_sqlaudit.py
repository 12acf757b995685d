"""The audit hook on SQL: an append-only, hash-chained, group-committed log.

Each event becomes one row of ``audit_log``: a gap-free ``seq`` (assigned by the writer under the
lock on ``audit_head``, never by a database sequence, which may skip), the session id, the event
as canonical JSON (sorted keys), the previous row's hash and its own::

    hash = sha256(canonical_json({"event": event, "prev": prev_hash, "seq": seq,
                                  "session_id": session_id}))

The database itself refuses ``UPDATE`` and ``DELETE`` on ``audit_log`` (triggers), and
``audit_head`` (the last seq and hash) may only move forward, so truncating the tail is refused
too. :meth:`SqlAuditLog.verify` recomputes everything, a chunk of rows at a time (constant memory),
and reports the first bad seq. That proves the chain intact, not that it was not rebuilt from the
start or cut short by someone able to drop the triggers: :meth:`SqlAuditLog.head` exports the head
(seq and hash) to keep elsewhere, and ``verify(anchor=...)`` checks the log still passes through it.

Open sessions: the batch that logs a session's ``session_started`` also adds it to
``open_sessions`` (with the log's ``owner``), and the one that logs its ``session_outcome`` removes
it, so what a crashed process left in flight is one query away (:meth:`SqlAuditLog.open_sessions`,
used by :meth:`~taleus_hooks._sqlbackend.SqlBackend.recover`).

Group commit: ``log_events`` returns once its events are durable. The events of one call are
written in one transaction, whole or not at all; calls made while a transaction is being written
wait and go together in the next one: one transaction (one fsync) per group, one group in flight
at a time, written by whichever waiting task leads (``SqlDatabase.write``: on the event loop for
SQLite, in a worker thread for PostgreSQL).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from pydantic import TypeAdapter

from taleus_bootstrap import AuditEvent

from ._batching import Batcher
from ._common import Cursor, SqlDatabase, canonical_json

__all__ = [
    "DEFAULT_OWNER",
    "GENESIS_HASH",
    "VERIFY_CHUNK",
    "AuditHead",
    "AuditRow",
    "AuditStatistics",
    "AuditWriteError",
    "ChainReport",
    "OpenSession",
    "SqlAuditLog",
    "chain_hash",
]

GENESIS_HASH: Final = "0" * 64
MAX_BATCH: Final = 512
_EVENT_ADAPTER: TypeAdapter[AuditEvent] = TypeAdapter(AuditEvent)


def chain_hash(prev_hash: str, seq: int, session_id: str, event: Any) -> str:
    """The hash of one audit row (``event`` as its JSON object)."""
    envelope = {"event": event, "prev": prev_hash, "seq": seq, "session_id": session_id}
    return hashlib.sha256(canonical_json(envelope).encode()).hexdigest()


def _chain_hash_of_text(prev_hash: str, seq: int, session_id: str, event_text: str) -> str:
    """:func:`chain_hash` from the event's canonical JSON text, without encoding it again.

    The envelope's keys in sorted order are ``event``, ``prev``, ``seq``, ``session_id``, so its
    canonical JSON is the concatenation below (the tests check both agree)."""
    envelope = (
        f'{{"event":{event_text},"prev":{canonical_json(prev_hash)},"seq":{seq},'
        f'"session_id":{canonical_json(session_id)}}}'
    )
    return hashlib.sha256(envelope.encode()).hexdigest()


@dataclass(frozen=True)
class AuditRow:
    """One stored audit row, decoded."""

    seq: int
    session_id: str
    event: AuditEvent


@dataclass(frozen=True)
class ChainReport:
    """What :meth:`SqlAuditLog.verify` found."""

    ok: bool
    rows: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str | None = None
    """The hash of the last row when the chain is intact: keep a copy elsewhere with its seq
    (:meth:`SqlAuditLog.head`), and a later ``verify(anchor=...)`` shows whether the log was
    rewritten or cut short since."""


class AuditHead(NamedTuple):
    """The head of the log: its last row's seq and hash, an anchor for ``verify``."""

    seq: int
    hash: str


@dataclass(frozen=True)
class AuditStatistics:
    """Group-commit figures since the log was opened."""

    events_written: int
    batches: int
    largest_batch: int
    queue_depth: int
    write_seconds_total: float


class AuditWriteError(RuntimeError):
    """The batch holding this event could not be written (the event is not recorded)."""


class _Entry:
    __slots__ = ("event", "session_id", "text")

    def __init__(self, session_id: str, event: dict[str, Any]) -> None:
        self.session_id = session_id
        self.event = event  # the JSON object, hashed as such
        self.text = canonical_json(event)  # what is stored


@dataclass(frozen=True)
class OpenSession:
    """A session whose start is logged and whose outcome is not (yet)."""

    session_id: str
    side: str
    started_at: datetime


DEFAULT_OWNER: Final = "local"
"""The owner of the open sessions of a log that one node writes alone."""


class SqlAuditLog:
    """Audit hook on a SQL database, with sync readers for tools and tests.

    ``owner`` names the node writing: nodes that share one log (PostgreSQL) need distinct
    owners, so that each recovers only the sessions it left open.
    """

    def __init__(self, db: SqlDatabase, *, owner: str = DEFAULT_OWNER) -> None:
        self._db = db
        self.owner = owner
        # Its own transactions (``db.write``): the log batches already, the SQLite group commit
        # would only add a wait. A group is written (or fails) as a whole: cancelled only while
        # nothing of it is done.
        self._batcher: Batcher[list[_Entry]] = Batcher(self._write, MAX_BATCH)
        self.events_written = 0

    # -- the hook -------------------------------------------------------------------------

    async def log_events(self, session_id: str, events: Sequence[AuditEvent]) -> None:
        """Append ``events``, in order; returns once they are durable (see group commit
        above). Cancelled before its group is written, the batch is dropped (not recorded)."""
        entries = [_Entry(session_id, event.model_dump(mode="json")) for event in events]
        try:
            await self._batcher.submit(entries)
        except Exception as exc:
            raise AuditWriteError("audit batch could not be written") from exc

    async def log_session(self, session_id: str, event: AuditEvent) -> None:
        """Append one ``event`` (a batch of one)."""
        await self.log_events(session_id, (event,))

    async def _write(self, groups: list[list[_Entry]]) -> None:
        batch = [entry for group in groups for entry in group]
        await self._db.write(lambda cur: self._append(cur, batch))
        self.events_written += len(batch)

    def _append(self, cur: Cursor, batch: list[_Entry]) -> None:
        cur.execute(f"SELECT seq, hash FROM audit_head WHERE id = 1{self._db.for_update}")
        seq, prev = cur.fetchone()
        seq = int(seq)
        rows = []
        for entry in batch:
            seq += 1
            digest = _chain_hash_of_text(prev, seq, entry.session_id, entry.text)
            rows.append((seq, entry.session_id, entry.event["kind"], entry.text, prev, digest))
            prev = digest
        cur.executemany(
            "INSERT INTO audit_log (seq, session_id, kind, event, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        self._track_open_sessions(cur, batch)
        cur.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))

    def _track_open_sessions(self, cur: Cursor, batch: list[_Entry]) -> None:
        started = [
            (e.session_id, self.owner, e.event["side"], _timestamp(e.event["at"]))
            for e in batch
            if e.event["kind"] == "session_started"
        ]
        ended = [(e.session_id,) for e in batch if e.event["kind"] == "session_outcome"]
        if started:
            cur.executemany(
                "INSERT INTO open_sessions (session_id, owner, side, started_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                started,
            )
        if ended:
            cur.executemany("DELETE FROM open_sessions WHERE session_id = ?", ended)

    def open_sessions(self, owners: Sequence[str] | None = None) -> list[OpenSession]:
        """This owner's (or ``owners``') sessions that have started and not ended, oldest
        first. While the node runs these are its sessions in flight; after a crash, the ones it
        left behind."""
        names = [self.owner] if owners is None else list(owners)

        def select(cur: Cursor) -> list[OpenSession]:
            found: list[OpenSession] = []
            for name in names:
                cur.execute(
                    "SELECT session_id, side, started_at FROM open_sessions WHERE owner = ?",
                    (name,),
                )
                found += [
                    OpenSession(str(sid), str(side), datetime.fromtimestamp(float(at), UTC))
                    for sid, side, at in cur.fetchall()
                ]
            return sorted(found, key=lambda session: session.started_at)

        return self._db.transact(select)

    def open_owners(self) -> dict[str, int]:
        """``{owner: sessions open}`` of every owner with sessions open in this log (several
        nodes sharing a PostgreSQL schema, or the workers of one ``serve --workers``)."""

        def select(cur: Cursor) -> dict[str, int]:
            cur.execute("SELECT owner, COUNT(*) FROM open_sessions GROUP BY owner")
            return {str(owner): int(count) for owner, count in cur.fetchall()}

        return self._db.transact(select)

    def statistics(self) -> AuditStatistics:
        """Group-commit figures: events, batches, largest batch, queue depth, write time."""
        batcher = self._batcher
        return AuditStatistics(
            events_written=self.events_written,
            batches=batcher.batches,
            largest_batch=batcher.largest_batch,
            queue_depth=batcher.queue_depth,
            write_seconds_total=batcher.write_seconds,
        )

    # -- readers (sync) ---------------------------------------------------------------------

    def for_session(self, session_id: str) -> list[AuditEvent]:
        """The events of one session, in order."""
        return [row.event for row in self.session_rows(session_id)]

    def session_rows(self, session_id: str) -> list[AuditRow]:
        """The rows of one session, in order."""
        return self._select("WHERE session_id = ? ORDER BY seq", (session_id,))

    @property
    def events(self) -> list[tuple[str, AuditEvent]]:
        """Every ``(session_id, event)``, in order."""
        return [(row.session_id, row.event) for row in self._select("ORDER BY seq", ())]

    def awaiting_decision(self) -> list[str]:
        """The sessions (invitee) with an ``awaiting_decision`` event, oldest first (a partial
        index keeps this cheap on a large log)."""

        def select(cur: Cursor) -> list[str]:
            cur.execute(
                "SELECT session_id FROM audit_log WHERE kind = 'awaiting_decision' ORDER BY seq"
            )
            return [str(row[0]) for row in cur.fetchall()]

        return self._db.transact(select)

    def session_ids(self) -> list[str]:
        """Every session id seen, in order of first appearance."""

        def select(cur: Cursor) -> list[str]:
            cur.execute("SELECT session_id FROM audit_log GROUP BY session_id ORDER BY min(seq)")
            return [str(row[0]) for row in cur.fetchall()]

        return self._db.transact(select)

    def tail(self, n: int = 20) -> list[AuditRow]:
        """The last ``n`` rows, oldest first."""
        rows = self._select("ORDER BY seq DESC LIMIT ?", (n,))
        return rows[::-1]

    def after(self, seq: int, limit: int = 1000) -> list[AuditRow]:
        """Up to ``limit`` rows with a sequence number above ``seq``, oldest first."""
        return self._select("WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))

    def _select(self, clause: str, params: tuple[Any, ...]) -> list[AuditRow]:
        def select(cur: Cursor) -> list[AuditRow]:
            cur.execute(f"SELECT seq, session_id, event FROM audit_log {clause}", params)
            return [
                AuditRow(int(seq), str(sid), _EVENT_ADAPTER.validate_json(text))
                for seq, sid, text in cur.fetchall()
            ]

        return self._db.transact(select)

    def head(self) -> AuditHead:
        """The recorded head: the last row's seq and hash (``(0, GENESIS_HASH)`` when empty).
        Copied somewhere this log's writers cannot write, it is an anchor for :meth:`verify`."""

        def select(cur: Cursor) -> AuditHead:
            cur.execute("SELECT seq, hash FROM audit_head WHERE id = 1")
            seq, digest = cur.fetchone()
            return AuditHead(int(seq), str(digest))

        return self._db.transact(select)

    def verify(
        self,
        *,
        progress: Callable[[int], None] | None = None,
        anchor: tuple[int, str] | None = None,
    ) -> ChainReport:
        """Recompute the whole chain; report the first row that does not check out.

        The rows are read :data:`VERIFY_CHUNK` at a time by seq (keyset pagination), so memory
        stays constant however long the log. With ``anchor`` (a ``(seq, hash)`` an earlier
        :meth:`head` returned), the chain must also still pass through it: the row at that seq
        has that hash (else the log was rewritten), and the log reaches it (else it was cut
        short)."""
        if anchor is not None and anchor[0] < 0:
            raise ValueError("an anchor's seq is 0 or more")

        def check(cur: Cursor) -> ChainReport:
            cur.execute("SELECT seq, hash FROM audit_head WHERE id = 1")
            head_seq, head_hash = cur.fetchone()
            walk = _ChainWalk(anchor, progress)
            while walk.ok and (chunk := _next_chunk(cur, walk.expected_seq - 1)):
                walk.feed(chunk)
            if walk.failure is not None:
                return walk.failure
            if anchor is not None and walk.expected_seq <= anchor[0]:
                return ChainReport(
                    False,
                    walk.rows,
                    walk.expected_seq,
                    f"the log ends at seq {walk.expected_seq - 1}, before the anchor "
                    f"{_anchor_text(anchor)} (truncated)",
                )
            if (int(head_seq), str(head_hash)) != (walk.expected_seq - 1, walk.prev):
                return ChainReport(
                    False,
                    walk.rows,
                    walk.expected_seq,
                    "the log ends before the recorded head (truncated)",
                )
            return ChainReport(True, walk.rows, head_hash=walk.prev)

        return self._db.transact(check)


VERIFY_CHUNK: Final = 2000
"""Rows :meth:`SqlAuditLog.verify` reads per query."""


def _next_chunk(cur: Cursor, after_seq: int) -> list[Any]:
    cur.execute(
        "SELECT seq, session_id, event, prev_hash, hash FROM audit_log WHERE seq > ?"
        " ORDER BY seq LIMIT ?",
        (after_seq, VERIFY_CHUNK),
    )
    return cur.fetchall()


def _anchor_text(anchor: tuple[int, str]) -> str:
    return f"{anchor[0]}:{anchor[1][:16]}..."


class _ChainWalk:
    """The state of one :meth:`SqlAuditLog.verify`, fed the rows in order, a chunk at a time."""

    def __init__(
        self, anchor: tuple[int, str] | None, progress: Callable[[int], None] | None
    ) -> None:
        self.anchor = anchor
        self.progress = progress
        self.expected_seq, self.prev, self.rows = 1, GENESIS_HASH, 0
        self.failure: ChainReport | None = None
        if anchor is not None and anchor[0] == 0 and anchor[1] != GENESIS_HASH:
            self.failure = ChainReport(
                False, 0, 0, f"the anchor {_anchor_text(anchor)} is not the empty log's head"
            )

    @property
    def ok(self) -> bool:
        return self.failure is None

    def feed(self, chunk: list[Any]) -> None:
        for seq, sid, text, prev_hash, digest in chunk:
            bad = _check_row(
                int(seq), self.expected_seq, str(sid), str(text), self.prev, prev_hash, digest
            )
            if bad is None:
                bad = self._off_anchor(int(seq), digest)
            if bad is not None:
                self.failure = ChainReport(False, self.rows, bad[0], bad[1])
                return
            self.rows += 1
            self.expected_seq, self.prev = int(seq) + 1, str(digest)
            if self.progress is not None:
                self.progress(self.rows)

    def _off_anchor(self, seq: int, digest: Any) -> tuple[int, str] | None:
        anchor = self.anchor
        if anchor is None or seq != anchor[0] or digest == anchor[1]:
            return None
        return seq, f"the log does not pass through the anchor {_anchor_text(anchor)} (rewritten)"


def _timestamp(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


def _check_row(
    seq: int, expected_seq: int, sid: str, text: str, prev: str, prev_hash: Any, digest: Any
) -> tuple[int, str] | None:
    if seq != expected_seq:
        return expected_seq, f"row {expected_seq} is missing"
    if prev_hash != prev:
        return seq, "prev_hash does not match the previous row's hash"
    try:
        _EVENT_ADAPTER.validate_json(text)
        event = json.loads(text)
    except ValueError:
        return seq, "event is not a valid audit event"
    if canonical_json(event) != text:
        return seq, "event is not in canonical form"
    if chain_hash(prev, seq, sid, event) != digest:
        return seq, "hash does not match the row's contents"
    return None
