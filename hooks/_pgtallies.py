"""PostgreSQL tally databases: one schema and one login role per tally, prepared ahead (see
:class:`PostgresTallyFactory` and the :mod:`taleus_hooks.postgres` docstring)."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from typing import Any, Final
from urllib.parse import quote, urlencode

import psycopg
import trio
from psycopg import sql

from taleus_bootstrap import DatabaseInfo, Tally

from ._common import Cursor
from ._pgdatabase import (
    PostgresDatabase,
    limit_waits,
    remaining_budget_ms,
    thread_budget_ms,
)
from ._pgsecrets import CredentialBox
from ._sqlschema import (
    DRAFT_TALLY_SELECT,
    draft_tally_row,
    draft_tally_table,
    tally_from_row,
)

__all__ = ["POOL_LOW", "POOL_SIZE", "PREPARED_PREFIX", "PostgresTallyFactory", "read_draft_tally"]

logger = logging.getLogger("taleus_hooks.postgres")

POOL_SIZE: Final = 32
"""Tally schemas and roles kept prepared (by each database user, in each control schema)."""
POOL_LOW: Final = 8
"""Prepared tallies left when the background refill starts."""
PREPARED_PREFIX: Final = "tally_prep_"
"""Names of the prepared roles and schemas (``tally_prep_<24 hex digits>``)."""
PREPARE_TIMEOUT_MS: Final = 10_000
"""How long one preparation may take on the server (it also bounds how long :meth:`close`
waits for the refill thread)."""
RETRY_AFTER_S: Final = 5.0
"""After a failed preparation, the refill thread waits this long before trying again."""


class PostgresTallyFactory:
    """Each tally in its own schema, owned by its own login role.

    ``prepared`` (0: none) roles and schemas are kept **prepared ahead** by a background thread
    with a connection of its own (never the event loop, nor the hooks' pool): it starts at the
    first :meth:`create`, and tops the pool up again whenever fewer than ``low`` are left
    (``low=0``: only :meth:`prepare` fills it). A prepared role cannot log in (``NOLOGIN``) but
    has its generated password already, as a SCRAM verifier: setting a password costs the
    server a SCRAM hash of its own (it checks that the password is not empty), about 6 ms of
    its CPU here, which the hand-out is spared (a rename keeps a SCRAM verifier; only MD5 ones
    are cleared). Its schema holds the empty ``draft_tally`` table, owned by it, and ``PUBLIC``
    gets nothing. Each is listed in the control schema's ``prepared_tallies`` with its password
    (sealed with ``box``, as in ``tally_credentials``: :mod:`taleus_hooks._pgsecrets`)
    and the database user that made it: only that user's backends take it (renaming a role
    needs admin rights on it). :meth:`create` takes one, and with none left creates the role
    and schema itself.
    """

    def __init__(
        self,
        db: PostgresDatabase,
        box: CredentialBox,
        *,
        prepared: int = POOL_SIZE,
        low: int = POOL_LOW,
    ):
        if not 0 <= low <= prepared:
            raise ValueError("need 0 <= low <= prepared")
        self._db = db
        self._box = box
        info = psycopg.conninfo.conninfo_to_dict(db.dsn)
        self._host = str(info.get("host") or "")
        self._port = str(info.get("port") or "")
        self._dbname = str(info.get("dbname") or "")
        self.prepared = prepared
        """The pool's size: how many prepared roles and schemas the refill aims at."""
        self.low = low
        """Fewer left than this (as last seen), and the refill thread is woken."""
        self.prepared_used = 0
        """Tallies created from a prepared role and schema (the others were created on the
        spot)."""
        self._left = 0  # prepared ones left, as last seen (a hint: other nodes take them too)
        self._wake = threading.Condition()
        self._wanted = self._stopping = False
        self._refiller: threading.Thread | None = None

    def _name(self, tally_id: str) -> str:
        digest = hashlib.sha256(f"{self._db.schema}\x00{tally_id}".encode()).hexdigest()
        return f"tally_{digest[:24]}"

    def locate(self, tally_id: str) -> DatabaseInfo:
        """A libpq URI naming the tally's role and schema (no password)."""
        name = self._name(tally_id)
        query: dict[str, str] = {"options": f"-csearch_path={name}"}
        netloc = name + "@"
        if self._host.startswith("/"):
            query["host"] = self._host
        elif self._host:
            netloc += quote(self._host, safe=":[]")
        if self._port and not self._host.startswith("/"):
            netloc += f":{self._port}"
        elif self._port:
            query["port"] = self._port
        endpoint = f"postgresql://{netloc}/{quote(self._dbname)}?{urlencode(query)}"
        ref = f"postgres:{self._db.schema}.tally_credentials/{name}"
        return DatabaseInfo(endpoint=endpoint, credentials_ref=ref)

    async def create(self, tally: Tally, database: DatabaseInfo) -> None:
        """Give the tally a prepared role and schema (renamed, allowed to log in, its row and
        credentials written), or create them if none is left (a new password, sent as a SCRAM
        verifier); in a worker thread, bounded by what is left of the caller's deadline (as
        :meth:`PostgresDatabase.run`)."""
        if await trio.to_thread.run_sync(self._create, tally, database, remaining_budget_ms()):
            self.prepared_used += 1
            self._left = max(0, self._left - 1)
        else:
            self._left = 0
        if self._left < self.low:
            self._want_refill()

    def _create(self, tally: Tally, database: DatabaseInfo, budget_ms: int | None) -> bool:
        name = database.credentials_ref.rsplit("/", 1)[1]

        def create(conn: psycopg.Connection[Any]) -> bool:
            role, schema = sql.Identifier(name), sql.Identifier(name)
            with conn.transaction():
                if budget_ms is not None:
                    limit_waits(conn.execute, budget_ms)
                taken = self._take_prepared(conn) if self.prepared else None
                if taken is not None:
                    # Renaming a role clears an MD5 password, not a SCRAM verifier. The
                    # password moves as it is stored (sealed).
                    prep, stored = sql.Identifier(taken[0]), taken[1]
                    conn.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(prep, role))
                    conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(role))
                    conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(prep, schema))
                else:
                    password = secrets.token_urlsafe(24)
                    conn.execute(
                        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                            role, sql.Literal(_verifier(conn, password, name))
                        )
                    )
                    stored = self._box.seal(password)
                    _create_schema(conn, schema, role)
                conn.execute(
                    sql.SQL("INSERT INTO {}.draft_tally VALUES (%s, %s, %s, %s, %s)").format(
                        schema
                    ),
                    draft_tally_row(tally),
                )
                conn.execute(
                    "INSERT INTO tally_credentials (role_name, password) VALUES (%s, %s)",
                    (name, stored),
                )
            return taken is not None

        return self._db.run_admin(create, budget_ms=budget_ms)

    @staticmethod
    def _take_prepared(conn: psycopg.Connection[Any]) -> tuple[str, str] | None:
        """Take one prepared role and schema of this database user, in this transaction: its
        name and password (one that another transaction holds is skipped, never waited for)."""
        row = conn.execute(
            "DELETE FROM prepared_tallies WHERE name = (SELECT name FROM prepared_tallies"
            " WHERE prepared_by = current_user LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " RETURNING name, password"
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def prepared_count(self) -> int:
        """How many prepared roles and schemas of this database user are left now (in the
        calling thread; other nodes sharing the schema take from them too)."""

        def count(cur: Cursor) -> int:
            cur.execute("SELECT count(*) FROM prepared_tallies WHERE prepared_by = current_user")
            return int(cur.fetchone()[0])

        return self._db.transact(count)

    def prepare(self) -> int:
        """Top the pool up to :attr:`prepared` now, in the calling thread, on a connection of
        its own; return how many were made. Raises ``psycopg.Error`` if one could not be."""
        with self._connect() as conn:
            made = 0
            while self._prepare_one(conn):
                made += 1
            return made

    def _connect(self) -> psycopg.Connection[Any]:
        conn = self._db.connect()
        try:
            limit_waits(conn.execute, PREPARE_TIMEOUT_MS, local=False)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare_one(self, conn: psycopg.Connection[Any]) -> bool:
        """Make one prepared role and schema if the pool is short of one (one transaction);
        return whether one was made."""
        name = PREPARED_PREFIX + secrets.token_hex(12)
        ident = sql.Identifier(name)
        with conn.transaction():
            row = conn.execute(
                "SELECT count(*) FROM prepared_tallies WHERE prepared_by = current_user"
            ).fetchone()
            left = 0 if row is None else int(row[0])
            if left >= self.prepared:
                self._left = left
                return False
            password = secrets.token_urlsafe(24)
            verifier = sql.Literal(_verifier(conn, password, name))
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN PASSWORD {}").format(ident, verifier))
            _create_schema(conn, ident, ident)
            conn.execute(
                "INSERT INTO prepared_tallies (name, password) VALUES (%s, %s)",
                (name, self._box.seal(password)),
            )
        self._left = left + 1
        return True

    def _want_refill(self) -> None:
        """Wake the refill thread (start it the first time)."""
        with self._wake:
            if self._stopping:
                return
            self._wanted = True
            if self._refiller is None:
                self._refiller = threading.Thread(
                    target=self._refill_loop, name="taleus-pg-prepare", daemon=True
                )
                self._refiller.start()
            self._wake.notify()

    def _refill_loop(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            while True:
                with self._wake:
                    while not (self._wanted or self._stopping):
                        self._wake.wait()
                    if self._stopping:
                        return
                    self._wanted = False
                try:
                    if conn is None or conn.closed:
                        conn = self._connect()
                    while not self._stopping and self._prepare_one(conn):
                        pass
                except psycopg.Error:  # the next creates make their own meanwhile
                    logger.warning("could not prepare tally roles and schemas", exc_info=True)
                    if conn is not None:
                        conn.close()
                        conn = None
                    deadline = time.monotonic() + RETRY_AFTER_S
                    with self._wake:
                        while not self._stopping and time.monotonic() < deadline:
                            self._wake.wait(deadline - time.monotonic())
        finally:
            if conn is not None:
                conn.close()

    def close(self) -> None:
        """Stop the refill thread (it finishes the preparation in hand, a few ms at most
        :data:`PREPARE_TIMEOUT_MS`). The prepared roles and schemas stay, for the next run."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
            refiller, self._refiller = self._refiller, None
        if refiller is not None:
            refiller.join()

    def drop(self, database: DatabaseInfo) -> None:
        """Drop the schema, the role and its stored password (each if it exists). Bounded, in
        a thread ``in_worker_thread`` started, by its caller's deadline."""
        name = database.credentials_ref.rsplit("/", 1)[1]
        budget_ms = thread_budget_ms()

        def drop(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                if budget_ms is not None:
                    limit_waits(conn.execute, budget_ms)
                ident = sql.Identifier(name)
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))
                conn.execute("DELETE FROM tally_credentials WHERE role_name = %s", (name,))

        self._db.run_admin(drop, budget_ms=budget_ms)


def _verifier(conn: psycopg.Connection[Any], password: str, role: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password`` (made by libpq: the server never sees the
    password itself)."""
    return conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


def _create_schema(
    conn: psycopg.Connection[Any], schema: sql.Identifier, role: sql.Identifier
) -> None:
    """The tally schema owned by ``role``, closed to ``PUBLIC``, holding the empty draft-tally
    table (owned by ``role`` too)."""
    conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(schema, role))
    conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema))
    conn.execute(sql.SQL(draft_tally_table("{}.draft_tally")).format(schema))
    conn.execute(sql.SQL("ALTER TABLE {}.draft_tally OWNER TO {}").format(schema, role))


def read_draft_tally(endpoint: str, password: str) -> Tally | None:
    """Connect to a tally database as its own role and read the draft tally (None if gone)."""
    try:
        conn = psycopg.connect(endpoint, password=password, connect_timeout=10)
    except psycopg.OperationalError:
        return None
    with conn:
        return tally_from_row(conn.execute(DRAFT_TALLY_SELECT).fetchone())
