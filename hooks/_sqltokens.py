"""The token hook on SQL: one-time, N-use and unlimited tokens, stored as digests.

A reservation is one row in ``reservations`` written in the same transaction that locked the
token's row and counted the uses (SQLite: the transaction holds the database write lock from its
first statement; PostgreSQL: ``SELECT ... FOR UPDATE`` on the token row). There is no
check-then-write window, across tasks, threads or processes. Each reservation carries the session
id and a lease: a reservation left by a crashed process is reclaimed once its lease has run out
(by the next ``validate`` of that token, or by :meth:`SqlTokenStore.reclaim_expired`).
``mark_used`` moves the reservation to ``redemptions``, so the uses of a token can be matched
against completed sessions. A reservation settled without ``mark_used`` (lease run out, or its
session known to be over) is redeemed if its session's tally was committed, released otherwise.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import JsonValue

from taleus_bootstrap import Role, TokenInfo, token_digest

from ._common import (
    Clock,
    Cursor,
    SqlDatabase,
    TokenRecord,
    check_mint_arguments,
    utc_now,
)

__all__ = ["DEFAULT_RESERVATION_LEASE", "SqlTokenStore", "TOKEN_TABLES"]

DEFAULT_RESERVATION_LEASE: Final = timedelta(minutes=15)
"""How long a reservation is held before it counts as abandoned. Keep it above the session
timeout of every node using the store (the default session timeout is far below it)."""

TOKEN_TABLES: Final = ("tokens", "reservations", "redemptions")

_TOKEN_COLUMNS = (
    "digest, inviter_role, created_at, expires_at, max_uses, max_in_flight,"
    " identity_requirements, label, used, revoked"
)


def _ts(value: datetime) -> float:
    return value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class SqlTokenStore:
    """Token hook on a SQL database (see the module docstring for the locking).

    Administrative methods (``mint``, ``revoke``, ``get``, ``records``...) are synchronous: they
    suit a command line or start-up code; from async code run them with ``trio.to_thread``.
    """

    def __init__(
        self,
        db: SqlDatabase,
        *,
        clock: Clock = utc_now,
        reservation_lease: timedelta = DEFAULT_RESERVATION_LEASE,
    ) -> None:
        if reservation_lease <= timedelta(0):
            raise ValueError("reservation_lease must be positive")
        self._db = db
        self._clock = clock
        self.reservation_lease = reservation_lease

    # -- administration (sync) --------------------------------------------------------------

    def mint(
        self,
        inviter_role: Role,
        *,
        uses: int | None = 1,
        ttl: timedelta | None = timedelta(hours=1),
        identity_requirements: Mapping[str, JsonValue] | None = None,
        max_in_flight: int | None = None,
        label: str | None = None,
        token: str | None = None,
    ) -> str:
        """Create a token and return it (the only time it is seen). ``uses=None``: unlimited."""
        check_mint_arguments(uses, max_in_flight)
        if inviter_role not in ("stock", "foil"):
            raise ValueError("inviter_role must be 'stock' or 'foil'")
        token = token or secrets.token_urlsafe(24)
        now = self._clock()
        row = (
            token_digest(token),
            inviter_role,
            _ts(now),
            _ts(now + ttl) if ttl is not None else None,
            uses,
            max_in_flight,
            json.dumps(dict(identity_requirements)) if identity_requirements else None,
            label,
        )

        def insert(cur: Cursor) -> None:
            cur.execute(f"SELECT 1 FROM tokens WHERE digest = ?{self._db.for_update}", (row[0],))
            if cur.fetchone() is not None:
                raise ValueError("token already exists")
            cur.execute(
                "INSERT INTO tokens (digest, inviter_role, created_at, expires_at, max_uses,"
                " max_in_flight, identity_requirements, label) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        self._db.transact(insert)
        return token

    def revoke(self, token: str) -> bool:
        """Revoke a token; True if it existed."""
        return self.revoke_digest(token_digest(token))

    def revoke_digest(self, digest: str) -> bool:
        """Revoke the token whose digest is ``digest`` (as listed by :meth:`records`)."""

        def update(cur: Cursor) -> bool:
            cur.execute("UPDATE tokens SET revoked = 1 WHERE digest = ?", (digest,))
            return cur.rowcount == 1

        return self._db.transact(update)

    def get(self, token: str) -> TokenRecord | None:
        """The record of ``token`` (for inspection), or None."""
        records = self._records(token_digest(token))
        return records[0] if records else None

    def records(self) -> tuple[TokenRecord, ...]:
        """Every token record, oldest first."""
        return self._records(None)

    @property
    def reservations_held(self) -> int:
        """Reservations currently held across all tokens (expired leases included)."""

        def count(cur: Cursor) -> int:
            cur.execute("SELECT count(*) FROM reservations")
            return int(cur.fetchone()[0])

        return self._db.transact(count)

    def redemptions(self, token: str | None = None) -> list[tuple[str, str]]:
        """``(token digest, session id)`` of every committed use, optionally of one token."""

        def select(cur: Cursor) -> list[tuple[str, str]]:
            if token is None:
                cur.execute("SELECT token_digest, session_id FROM redemptions ORDER BY redeemed_at")
            else:
                cur.execute(
                    "SELECT token_digest, session_id FROM redemptions WHERE token_digest = ?"
                    " ORDER BY redeemed_at",
                    (token_digest(token),),
                )
            return [(str(d), str(s)) for d, s in cur.fetchall()]

        return self._db.transact(select)

    def reclaim_expired(self) -> int:
        """Settle every reservation whose lease has run out (see :meth:`release_sessions`);
        return how many were settled."""
        now = _ts(self._clock())
        return self._db.transact(
            lambda cur: self._settle(cur, "lease_expires_at <= ?", (now,), now)
        )

    def lapsed_sessions(self) -> list[str]:
        """The sessions holding a reservation whose lease has run out."""
        now = _ts(self._clock())

        def select(cur: Cursor) -> list[str]:
            cur.execute(
                "SELECT DISTINCT session_id FROM reservations WHERE lease_expires_at <= ?", (now,)
            )
            return [str(sid) for (sid,) in cur.fetchall()]

        return self._db.transact(select)

    def release_sessions(self, session_ids: list[str]) -> int:
        """Settle every reservation held by ``session_ids`` (sessions known to be over, e.g.
        those in flight when the node crashed); return how many were settled.

        A reservation whose session *completed* — its tally is committed in ``provisions``, but
        ``mark_used`` never recorded the use (it failed after the ack, or the node died in
        between) — is redeemed, not released: a one-time token is never used twice. Any other
        reservation is given back.
        """
        now = _ts(self._clock())

        if not session_ids:
            return 0
        where = f"session_id IN ({', '.join('?' * len(session_ids))})"  # one pass: one lock order
        return self._db.transact(lambda cur: self._settle(cur, where, tuple(session_ids), now))

    def redeemed_sessions(self, session_ids: list[str]) -> set[str]:
        """Those of ``session_ids`` that redeemed a use (``mark_used`` ran for them)."""

        def select(cur: Cursor) -> set[str]:
            found = set()
            for sid in session_ids:
                cur.execute("SELECT 1 FROM redemptions WHERE session_id = ?", (sid,))
                if cur.fetchone() is not None:
                    found.add(sid)
            return found

        return self._db.transact(select)

    def _settle(self, cur: Cursor, where: str, params: tuple[Any, ...], now: float) -> int:
        cur.execute(
            f"SELECT token_digest, session_id, peer_id FROM reservations WHERE {where}", params
        )
        rows = sorted(cur.fetchall())
        lock = self._db.for_update
        for digest, session_id, peer_id in rows:
            if lock:  # token row first, as validate and mark_used lock it (no deadlock)
                cur.execute(f"SELECT 1 FROM tokens WHERE digest = ?{lock}", (digest,))
            cur.execute(
                "DELETE FROM reservations WHERE token_digest = ? AND session_id = ?",
                (digest, session_id),
            )
            if cur.rowcount < 1:
                continue  # settled meanwhile by another process
            cur.execute(
                "SELECT 1 FROM provisions WHERE session_id = ? AND state = 'committed'",
                (session_id,),
            )
            if cur.fetchone() is not None:
                self._redeem(cur, digest, session_id, peer_id, now)
        return len(rows)

    @staticmethod
    def _redeem(cur: Cursor, digest: str, session_id: str, peer_id: str, now: float) -> None:
        cur.execute(
            "INSERT INTO redemptions (token_digest, session_id, peer_id, redeemed_at)"
            " VALUES (?, ?, ?, ?)",
            (digest, session_id, peer_id, now),
        )
        cur.execute("UPDATE tokens SET used = used + 1 WHERE digest = ?", (digest,))

    def _records(self, digest: str | None) -> tuple[TokenRecord, ...]:
        def select(cur: Cursor) -> tuple[TokenRecord, ...]:
            where = " WHERE digest = ?" if digest is not None else ""
            params = (digest,) if digest is not None else ()
            cur.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens{where} ORDER BY created_at", params)
            rows = cur.fetchall()
            held_where = " WHERE token_digest = ?" if digest is not None else ""
            cur.execute(f"SELECT token_digest, session_id FROM reservations{held_where}", params)
            held: dict[str, set[str]] = {}
            for d, sid in cur.fetchall():
                held.setdefault(str(d), set()).add(str(sid))
            return tuple(_record(row, held.get(str(row[0]), set())) for row in rows)

        return self._db.transact(select)

    # -- the hook (async) --------------------------------------------------------------------

    async def validate(self, token: str, *, session_id: str, peer_id: str) -> TokenInfo | None:
        """Validate and reserve one use for ``session_id``, atomically in the database."""
        digest = token_digest(token)
        now = self._clock()

        def reserve(cur: Cursor) -> TokenRecord | None:
            cur.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE digest = ?{self._db.for_update}",
                (digest,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute(
                "SELECT session_id, lease_expires_at FROM reservations WHERE token_digest = ?",
                (digest,),
            )
            held, expired = set(), False
            for held_by, lease_expires_at in cur.fetchall():
                if lease_expires_at <= _ts(now):
                    expired = True
                else:
                    held.add(str(held_by))
            if expired:  # settle abandoned reservations of this token now, then read it again
                where = "token_digest = ? AND lease_expires_at <= ?"
                self._settle(cur, where, (digest, _ts(now)), _ts(now))
                cur.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE digest = ?", (digest,))
                row = cur.fetchone()
            record = _record(row, held)
            if not record.available(now) or session_id in record.reservations:
                return None
            cur.execute(
                "INSERT INTO reservations (token_digest, session_id, peer_id, reserved_at,"
                " lease_expires_at) VALUES (?, ?, ?, ?, ?)",
                (digest, session_id, peer_id, _ts(now), _ts(now + self.reservation_lease)),
            )
            return record

        record = await self._db.run(reserve)
        if record is None:
            return None
        return TokenInfo(
            inviter_role=record.inviter_role,
            expires_at=record.expires_at,
            identity_requirements=record.identity_requirements,
        )

    async def mark_used(self, token: str, *, session_id: str) -> None:
        """Commit the reservation ``session_id`` holds (raises LookupError if it holds none)."""
        digest = token_digest(token)
        now = _ts(self._clock())

        def commit(cur: Cursor) -> None:
            if lock := self._db.for_update:  # lock the token's row first, as validate does
                cur.execute(f"SELECT 1 FROM tokens WHERE digest = ?{lock}", (digest,))
            cur.execute(
                "DELETE FROM reservations WHERE token_digest = ? AND session_id = ?"
                " RETURNING peer_id",
                (digest, session_id),
            )
            row = cur.fetchone()
            if row is None:
                raise LookupError("no reservation held by this session")
            self._redeem(cur, digest, session_id, row[0], now)

        await self._db.run(commit)

    async def release(self, token: str, *, session_id: str) -> None:
        """Give back the reservation ``session_id`` holds (no-op if none)."""
        digest = token_digest(token)

        def delete(cur: Cursor) -> None:
            cur.execute(
                "DELETE FROM reservations WHERE token_digest = ? AND session_id = ?",
                (digest, session_id),
            )

        await self._db.run(delete)


def _record(row: Any, reservations: set[str]) -> TokenRecord:
    digest, role, created, expires, max_uses, max_in_flight, requirements, label, used, revoked = (
        row
    )
    return TokenRecord(
        digest=str(digest),
        inviter_role=role,
        expires_at=_dt(expires),
        max_uses=max_uses,
        identity_requirements=json.loads(requirements) if requirements else None,
        used=int(used),
        revoked=bool(revoked),
        reservations=reservations,
        max_in_flight=max_in_flight,
        label=label,
        created_at=_dt(created),
    )
