"""PostgreSQL reference backend: several inviter nodes sharing one token store and audit log.

``PostgresBackend(dsn, schema="taleus", credentials_key_file=...)`` keeps its tables in
``schema`` (created if missing): the same ``tokens`` / ``reservations`` / ``redemptions`` /
``provisions`` as SQLite, the append-only ``audit_log`` (``UPDATE`` / ``DELETE`` /
``TRUNCATE`` refused by triggers) with its ``audit_head``, and ``tally_credentials``. A
reservation locks its token's row (``SELECT ... FOR UPDATE``), so any number of processes on
any number of hosts racing for a one-time token yield one reservation.

Each provisioned tally gets its own schema and its own login role with a generated password: the
role owns the schema and its ``draft_tally`` table, ``PUBLIC`` gets nothing. The password is sent
to the server only as a SCRAM verifier and kept in ``tally_credentials`` (readable by the
backend's role only), sealed with a key the node keeps apart from the database
(:mod:`taleus_hooks._pgsecrets`); ``ProvisionResult.database.endpoint`` is a libpq URI without
the password and ``credentials_ref`` names the row holding it
(:meth:`PostgresBackend.read_credentials`).

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

import os
from datetime import timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from taleus_bootstrap import ProvisionResult, Tally

from ._common import Clock, Cursor, RequirementsIdentityValidator, utc_now
from ._pgdatabase import UNREACHABLE_WAIT, PostgresDatabase
from ._pgsecrets import (
    KEY_FILE_NAME,
    CredentialBox,
    CredentialsKeyError,
    load_key_file,
    seal_clear_rows,
)
from ._pgtallies import POOL_LOW, POOL_SIZE, PREPARED_PREFIX, PostgresTallyFactory, read_draft_tally
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
    audit_tables,
    control_tables,
)
from ._sqltokens import DEFAULT_RESERVATION_LEASE, SqlTokenStore

__all__ = [
    "KEY_FILE_NAME",
    "PREPARED_PREFIX",
    "UNREACHABLE_WAIT",
    "AuditWriteError",
    "ChainReport",
    "CredentialsKeyError",
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


class PostgresBackend(SqlBackend):
    """The token, identity, database and audit hooks of one or many nodes, in one schema.

    Same options as :class:`~taleus_hooks.sqlite.SqliteBackend`, plus the pool size and
    ``owner``: the name of the node using this backend (``serve`` uses its peer id). Nodes
    sharing one schema need distinct owners, so that :meth:`recover` closes only the sessions
    this node left in flight. ``prepared`` tally roles and schemas are kept ready, refilled in
    the background when fewer than ``prepared_low`` are left (see :class:`PostgresTallyFactory`;
    ``prepared=0``: none, each tally's are created when it is provisioned). Use as a context
    manager or call :meth:`close`.

    The tally passwords the schema keeps are sealed with a key kept apart from the database:
    ``credentials_key`` (32 bytes) or ``credentials_key_file`` (created, 0600, on first use;
    ``serve`` keeps it in its data directory as ``pg-credentials.key``); exactly one of them.
    Nodes sharing a schema need the same key. Passwords an older version stored in clear are
    sealed when the backend opens the schema (and read as they are until then).
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
        credentials_key: bytes | None = None,
        credentials_key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if not 0 <= prepared_low <= prepared:
            raise ValueError("need 0 <= prepared_low <= prepared")
        if (credentials_key is None) == (credentials_key_file is None):
            raise ValueError(
                "give one of credentials_key and credentials_key_file: the key that seals the"
                " tally passwords the database keeps (kept apart from the database)"
            )
        if credentials_key is None:
            assert credentials_key_file is not None
            credentials_key = load_key_file(credentials_key_file)
        self.credentials = CredentialBox(credentials_key)
        self.db = PostgresDatabase(dsn, schema, max_size=pool_size)
        try:
            self.db.run_admin(self._set_up)
        except BaseException:
            self.db.close()
            raise
        self.tokens = SqlTokenStore(self.db, clock=clock, reservation_lease=reservation_lease)
        self.tallies = PostgresTallyFactory(
            self.db, self.credentials, prepared=prepared, low=prepared_low
        )
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
            seal_clear_rows(conn, self.credentials)  # stored in clear by an older version

    def read_credentials(self, credentials_ref: str) -> str | None:
        """The password a ``credentials_ref`` of this backend names (None if unknown).

        Raises :class:`CredentialsKeyError` if it was sealed with another key."""
        prefix = f"postgres:{self.db.schema}.tally_credentials/"
        if not credentials_ref.startswith(prefix):
            raise ValueError("not a credentials reference of this backend")
        name = credentials_ref[len(prefix) :]

        def select(cur: Cursor) -> str | None:
            cur.execute("SELECT password FROM tally_credentials WHERE role_name = ?", (name,))
            row = cur.fetchone()
            return None if row is None else str(row[0])

        stored = self.db.transact(select)
        return None if stored is None else self.credentials.open(stored)

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
