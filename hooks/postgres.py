"""PostgreSQL reference backend: several inviter nodes sharing one token store and audit log.

``PostgresBackend(dsn, schema="taleus")`` keeps its tables in ``schema`` (created if missing):
the same ``tokens`` / ``reservations`` / ``redemptions`` / ``provisions`` as SQLite, the
append-only ``audit_log`` (``UPDATE`` / ``DELETE`` / ``TRUNCATE`` refused by triggers) with its
``audit_head``, and ``tally_credentials``. A reservation locks its token's row
(``SELECT ... FOR UPDATE``), so any number of processes on any number of hosts racing for a
one-time token yield one reservation.

Each provisioned tally gets its own schema and its own login role with a generated password: the
role owns the schema and its ``draft_tally`` table, ``PUBLIC`` gets nothing. The password is sent
to the server only as a SCRAM verifier and kept in ``tally_credentials`` (readable by the backend's
role only); ``ProvisionResult.database.endpoint`` is a libpq URI without the password and
``credentials_ref`` names the row holding it (:meth:`PostgresBackend.read_credentials`).

Creating the role with its password, the schema and the table costs the server several catalog
writes, new files and (for the password) a SCRAM hash of its own, so they are **prepared
ahead** (:class:`PostgresTallyFactory`): a background thread keeps up to ``prepared`` of them
(role ``tally_prep_<random>`` that cannot log in yet, with its generated password's verifier;
its schema holding the empty ``draft_tally`` table), listed with their passwords in
``prepared_tallies`` (readable by the backend's role only). Provisioning then takes one (a row
lock, ``SKIP LOCKED``, so nodes sharing the schema never take the same), renames role and schema
to the tally's name, lets the role log in, and writes the row and the credentials, in one
transaction; with none left it creates them as before. Prepared objects survive restarts (the
next run uses them).

The backend's role needs ``CREATEROLE`` and ``CREATE`` on the database. Calls run in worker
threads on a small connection pool (``psycopg_pool``), never on the event loop.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Final, Self, TypeVar
from urllib.parse import quote, urlencode

import psycopg
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from taleus_bootstrap import DatabaseInfo, ProvisionResult, Tally

from ._common import CALLER_DEADLINE, Clock, Cursor, RequirementsIdentityValidator, utc_now
from ._sqlaudit import (
    DEFAULT_OWNER,
    GENESIS_HASH,
    AuditWriteError,
    ChainReport,
    SqlAuditLog,
    chain_hash,
)
from ._sqlbackend import MaintenanceReport, RecoveryReport, SqlBackend
from ._sqlprovision import DEFAULT_PROVISION_TTL, SqlProvisioner
from ._sqlschema import (
    DRAFT_TALLY_SELECT,
    audit_tables,
    control_tables,
    draft_tally_row,
    draft_tally_table,
    tally_from_row,
)
from ._sqltokens import DEFAULT_RESERVATION_LEASE, SqlTokenStore

__all__ = [
    "AuditWriteError",
    "ChainReport",
    "MaintenanceReport",
    "SqlAuditLog",
    "SqlProvisioner",
    "SqlTokenStore",
    "chain_hash",
    "PostgresBackend",
    "PostgresDatabase",
    "PostgresTallyFactory",
    "RecoveryReport",
    "read_draft_tally",
]

T = TypeVar("T")
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
_SETUP_LOCK: Final = 0x7A1E05  # advisory lock serializing schema set-up across processes

POSTGRES_DDL: Final = """
CREATE TABLE IF NOT EXISTS tally_credentials (
    role_name TEXT PRIMARY KEY,
    password TEXT NOT NULL
);
REVOKE ALL ON tally_credentials FROM PUBLIC;
CREATE TABLE IF NOT EXISTS prepared_tallies (
    name TEXT PRIMARY KEY,
    password TEXT NOT NULL,
    prepared_by TEXT NOT NULL DEFAULT current_user,
    prepared_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
REVOKE ALL ON prepared_tallies FROM PUBLIC;
CREATE OR REPLACE FUNCTION audit_refuse() RETURNS trigger LANGUAGE plpgsql AS
$fn$ BEGIN RAISE EXCEPTION '% on % refused: the audit log is append-only', TG_OP, TG_TABLE_NAME;
END $fn$;
CREATE OR REPLACE FUNCTION audit_head_forward() RETURNS trigger LANGUAGE plpgsql AS
$fn$ BEGIN
    IF NEW.seq < OLD.seq THEN RAISE EXCEPTION 'audit_head only moves forward'; END IF;
    RETURN NEW;
END $fn$;
CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_refuse();
CREATE OR REPLACE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse();
CREATE OR REPLACE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_forward();
CREATE OR REPLACE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_refuse();
CREATE OR REPLACE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse();
"""


class _QmarkCursor:
    """Adapts psycopg's ``%s`` placeholders to the ``?`` the shared SQL is written with."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def execute(self, query: str, params: Sequence[Any] = (), /) -> Any:
        return self._cursor.execute(query.replace("?", "%s").encode(), params)

    def executemany(self, query: str, params_seq: Sequence[Sequence[Any]], /) -> Any:
        return self._cursor.executemany(query.replace("?", "%s").encode(), params_seq)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


DEFAULT_CONNECT_TIMEOUT: Final = 10
"""Seconds libpq may take to connect, unless the DSN sets ``connect_timeout`` itself."""


MIN_BUDGET_MS: Final = 50
"""The least a call is given when its deadline is (nearly) spent: enough to fail cleanly."""

DEFAULT_RECONNECT_TIMEOUT: Final = 0.0
"""How long the pool keeps retrying to replace a lost connection before it gives that attempt up
(psycopg_pool's ``reconnect_timeout``). 0: a failed attempt is retried once at once, then given
up. The pool never gives up for good: every call that finds no connection starts a new attempt
(and one that waited :data:`UNREACHABLE_WAIT` in vain asks again, starting another), so the pool
is back as soon as the server is. psycopg_pool's default (300 s, the delay between attempts
doubling from 1 s) could leave the node waiting minutes after a long outage ended."""

UNREACHABLE_WAIT: Final = 0.25
"""While the pool's last connection attempt failed (the server is unreachable), how long a call
waits for a connection (at most; its deadline may be nearer): enough for the connection its
request starts to come back once the server does, short enough that a call fails fast (and the
clean-up after it too) instead of waiting out its whole deadline for a server that is gone."""


def _budget_ms() -> int | None:
    """What is left of the current task's deadline, in ms (None: no deadline)."""
    left = trio.current_effective_deadline() - trio.current_time()
    if left == math.inf:
        return None
    return max(MIN_BUDGET_MS, math.ceil(left * 1000))


def _thread_budget_ms() -> int | None:
    """What is left of the deadline ``in_worker_thread`` handed this thread, in ms (None:
    none was)."""
    deadline = CALLER_DEADLINE.get()
    if deadline is None:
        return None
    return max(MIN_BUDGET_MS, math.ceil((deadline - time.monotonic()) * 1000))


class _Reachability:
    """Whether the last connection attempt of a pool failed; logs each change once. Told by
    the pool's threads (a lock keeps two of them from logging one change twice)."""

    def __init__(self) -> None:
        self.unreachable = False
        self._lock = threading.Lock()

    def attempted(self, error: BaseException | None) -> None:
        if (error is not None) == self.unreachable:
            return  # no change (read without the lock: the common case)
        with self._lock:
            if (error is not None) == self.unreachable:
                return
            self.unreachable = error is not None
        if error is not None:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            logger.warning(
                "PostgreSQL unreachable (%s): calls fail after at most %g s; reconnecting",
                reason or type(error).__name__,
                UNREACHABLE_WAIT,
            )
        else:
            logger.warning("PostgreSQL reachable again: connected")


def _watched_connection_class(reach: _Reachability) -> type[psycopg.Connection[Any]]:
    """A connection class telling ``reach`` how each connection attempt of the pool went."""

    class WatchedConnection(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.OperationalError as exc:
                reach.attempted(exc)
                raise
            reach.attempted(None)
            return conn

    return WatchedConnection


class PostgresDatabase:
    """A connection pool whose connections use ``schema``; one transaction per call.

    After the server restarts (or a connection dies) the pool replaces what it lost by itself:
    every connection is checked (an empty query, one round trip) as it leaves the pool, so a
    dead one is discarded and replaced instead of failing the call that took it, and a failed
    reconnection is never final (see :data:`DEFAULT_RECONNECT_TIMEOUT`).
    A call waits for a connection no longer than its caller's deadline, and while the server
    is unreachable (the pool's last connection attempt failed) no longer than
    :data:`UNREACHABLE_WAIT`; then it fails (``psycopg_pool.PoolTimeout``). ``check=False``
    skips the check (saves the round trip; the first call on each dead connection then fails).
    """

    for_update = " FOR UPDATE"

    def __init__(
        self,
        dsn: str,
        schema: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
        check: bool = True,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in conninfo_to_dict(dsn):
            kwargs["connect_timeout"] = connect_timeout
        # One direct connection first: a wrong DSN fails now with libpq's own reason (refused,
        # authentication...), where the pool would retry for its whole timeout and then only
        # report that it timed out.
        psycopg.connect(dsn, **kwargs).close()
        self._reach = _Reachability()
        self.pool = ConnectionPool(
            dsn,
            connection_class=_watched_connection_class(self._reach),
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            configure=self._configure,
            check=ConnectionPool.check_connection if check else None,
            reconnect_timeout=reconnect_timeout,
            open=False,
        )
        self.pool.open(wait=True, timeout=30.0)

    @property
    def unreachable(self) -> bool:
        """True while the pool's last connection attempt failed."""
        return self._reach.unreachable

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    def _getconn(self, budget_ms: int | None) -> psycopg.Connection[Any]:
        """A pooled connection within ``budget_ms`` (None: the pool's own timeout), or
        ``PoolTimeout``; sooner while the server is unreachable. The first
        :data:`UNREACHABLE_WAIT` is waited apart, so that a call already waiting when the
        server goes away gives up then too; a call that waits longer than that (the pool busy,
        the server fine) waits the rest in line, as one wait."""
        total = self.pool.timeout if budget_ms is None else budget_ms / 1000
        deadline = time.monotonic() + total
        first = min(total, UNREACHABLE_WAIT)
        try:
            return self.pool.getconn(timeout=first)
        except PoolTimeout:
            left = deadline - time.monotonic()
            if not self._reach.unreachable and first < total and left > 0:
                with contextlib.suppress(PoolTimeout):
                    return self.pool.getconn(timeout=left)
        why = " (the server is unreachable)" if self._reach.unreachable else ""
        raise PoolTimeout(f"no PostgreSQL connection within {total:.2f} s{why}")

    @contextmanager
    def _connection(self, budget_ms: int | None) -> Iterator[psycopg.Connection[Any]]:
        conn = self._getconn(budget_ms)
        try:
            with conn:
                yield conn
        finally:
            self.pool.putconn(conn)

    def transact(self, fn: Callable[[Cursor], T], *, budget_ms: int | None = None) -> T:
        """Run ``fn`` in one transaction on a pooled connection, in the calling thread. With
        ``budget_ms`` (by default, what is left of the deadline ``in_worker_thread`` handed
        this thread, if any), the pool wait, its statements and its lock waits are cut after
        that long (``statement_timeout`` and ``lock_timeout`` for this transaction only)."""
        if budget_ms is None:
            budget_ms = _thread_budget_ms()
        with (
            self._connection(budget_ms) as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            if budget_ms is not None:
                cur.execute(f"SET LOCAL statement_timeout = {budget_ms}".encode())
                cur.execute(f"SET LOCAL lock_timeout = {budget_ms}".encode())
            return fn(_QmarkCursor(cur))

    async def run(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` in one transaction in a worker thread (PostgreSQL groups commits itself).

        A worker thread cannot be abandoned, so the caller's deadline (its trio cancel scope)
        is handed to the server instead: what is left of it bounds the pool wait, the
        transaction's statements and lock waits, and a stalled call ends about on time."""
        return await trio.to_thread.run_sync(
            functools.partial(self.transact, fn, budget_ms=_budget_ms())
        )

    async def write(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` in one transaction of its own in a worker thread (as :meth:`run`)."""
        return await self.run(fn)

    def run_admin(
        self, fn: Callable[[psycopg.Connection[Any]], T], *, budget_ms: int | None = None
    ) -> T:
        """Run ``fn`` with a raw pooled connection (autocommit) for DDL and role management.
        The pool wait is bounded as for :meth:`transact`; ``fn`` bounds its own statements."""
        if budget_ms is None:
            budget_ms = _thread_budget_ms()
        with self._connection(budget_ms) as conn:
            return fn(conn)

    def close(self) -> None:
        """Close the pool."""
        self.pool.close()


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
    and the database user that made it: only that user's backends take it (renaming a role
    needs admin rights on it). :meth:`create` takes one, and with none left creates the role
    and schema itself.
    """

    def __init__(self, db: PostgresDatabase, *, prepared: int = POOL_SIZE, low: int = POOL_LOW):
        if not 0 <= low <= prepared:
            raise ValueError("need 0 <= low <= prepared")
        self._db = db
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
        if await trio.to_thread.run_sync(self._create, tally, database, _budget_ms()):
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
                    conn.execute(f"SET LOCAL statement_timeout = {budget_ms}".encode())
                    conn.execute(f"SET LOCAL lock_timeout = {budget_ms}".encode())
                taken = self._take_prepared(conn) if self.prepared else None
                if taken is not None:
                    # Renaming a role clears an MD5 password, not a SCRAM verifier.
                    prep, password = sql.Identifier(taken[0]), taken[1]
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
                    _create_schema(conn, schema, role)
                conn.execute(
                    sql.SQL("INSERT INTO {}.draft_tally VALUES (%s, %s, %s, %s, %s)").format(
                        schema
                    ),
                    draft_tally_row(tally),
                )
                conn.execute(
                    "INSERT INTO tally_credentials (role_name, password) VALUES (%s, %s)",
                    (name, password),
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
        info = conninfo_to_dict(self._db.dsn)
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in info:
            kwargs["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
        conn = psycopg.connect(self._db.dsn, **kwargs)
        try:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._db.schema)))
            conn.execute(f"SET statement_timeout = {PREPARE_TIMEOUT_MS}".encode())
            conn.execute(f"SET lock_timeout = {PREPARE_TIMEOUT_MS}".encode())
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
                "INSERT INTO prepared_tallies (name, password) VALUES (%s, %s)", (name, password)
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
        budget_ms = _thread_budget_ms()

        def drop(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                if budget_ms is not None:
                    conn.execute(f"SET LOCAL statement_timeout = {budget_ms}".encode())
                    conn.execute(f"SET LOCAL lock_timeout = {budget_ms}".encode())
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


class PostgresBackend(SqlBackend):
    """The token, identity, database and audit hooks of one or many nodes, in one schema.

    Same options as :class:`~taleus_hooks.sqlite.SqliteBackend`, plus the pool size and
    ``owner``: the name of the node using this backend (``serve`` uses its peer id). Nodes
    sharing one schema need distinct owners, so that :meth:`recover` closes only the sessions
    this node left in flight. ``prepared`` tally roles and schemas are kept ready, refilled in
    the background when fewer than ``prepared_low`` are left (see :class:`PostgresTallyFactory`;
    ``prepared=0``: none, each tally's are created when it is provisioned). Use as a context
    manager or call :meth:`close`.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "taleus",
        clock: Clock = utc_now,
        reservation_lease: timedelta = DEFAULT_RESERVATION_LEASE,
        provision_ttl: timedelta = DEFAULT_PROVISION_TTL,
        pool_size: int = 8,
        owner: str = DEFAULT_OWNER,
        prepared: int = POOL_SIZE,
        prepared_low: int = POOL_LOW,
    ) -> None:
        if not 0 <= prepared_low <= prepared:
            raise ValueError("need 0 <= prepared_low <= prepared")
        self.db = PostgresDatabase(dsn, schema, max_size=pool_size)
        try:
            self.db.run_admin(self._set_up)
        except BaseException:
            self.db.close()
            raise
        self.tokens = SqlTokenStore(self.db, clock=clock, reservation_lease=reservation_lease)
        self.tallies = PostgresTallyFactory(self.db, prepared=prepared, low=prepared_low)
        self.database = SqlProvisioner(
            self.db, self.tallies, clock=clock, provision_ttl=provision_ttl
        )
        self.identity = RequirementsIdentityValidator()
        self.audit = SqlAuditLog(self.db, owner=owner)

    def _set_up(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.db.schema))
            )
            conn.execute(
                sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(self.db.schema))
            )
            ddl = (
                control_tables("DOUBLE PRECISION")
                + audit_tables("DOUBLE PRECISION", "BIGINT", GENESIS_HASH)
                + POSTGRES_DDL
            )
            conn.execute(ddl.encode())

    def read_credentials(self, credentials_ref: str) -> str | None:
        """The password a ``credentials_ref`` of this backend names (None if unknown)."""
        prefix = f"postgres:{self.db.schema}.tally_credentials/"
        if not credentials_ref.startswith(prefix):
            raise ValueError("not a credentials reference of this backend")
        name = credentials_ref[len(prefix) :]

        def select(cur: Cursor) -> str | None:
            cur.execute("SELECT password FROM tally_credentials WHERE role_name = ?", (name,))
            row = cur.fetchone()
            return None if row is None else str(row[0])

        return self.db.transact(select)

    def read_tally(self, result: ProvisionResult) -> Tally | None:
        """Read back the draft tally of a provision: connect through its endpoint as the tally's
        own role, with the password its ``credentials_ref`` names (None if gone)."""
        password = self.read_credentials(result.database.credentials_ref)
        return None if password is None else read_draft_tally(result.database.endpoint, password)

    def close(self) -> None:
        """Stop the refill thread and close the connection pool."""
        self.tallies.close()
        self.db.close()

    def __enter__(self) -> PostgresBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
