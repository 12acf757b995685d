"""What a node keeps at rest stays its own: the SQLite data directory is tightened, the
PostgreSQL tally passwords are sealed with a key kept apart from the database."""

from __future__ import annotations

import stat
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from taleus_hooks.sqlite import SqliteBackend

from .pgserver import TEST_CREDENTIALS_KEY
from .test_pg_prepared import request_for


def modes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]
    }


def test_sqlite_tightens_a_data_directory_others_can_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "node"
    (data_dir / "tallies").mkdir(parents=True)
    (data_dir / "notes.txt").write_text("left here by the operator")
    data_dir.chmod(0o755)
    (data_dir / "tallies").chmod(0o775)
    (data_dir / "notes.txt").chmod(0o644)
    with SqliteBackend(data_dir) as backend:
        backend.tokens.mint("stock")
        found = modes(data_dir)
    assert found["."] == found["tallies"] == 0o700
    assert found["notes.txt"] == 0o600
    assert all(mode & 0o077 == 0 for mode in found.values()), found  # the databases too
    assert "was open to other users: made 3 path(s) private" in caplog.text


def test_sqlite_leaves_a_private_data_directory_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SqliteBackend(tmp_path / "node") as backend:
        backend.tokens.mint("stock")
    with SqliteBackend(tmp_path / "node"):
        pass
    assert all(mode & 0o077 == 0 for mode in modes(tmp_path / "node").values())
    assert "open to other users" not in caplog.text


# -- PostgreSQL: tally passwords sealed at rest --------------------------------------------------


def stored_passwords(dsn: str, schema: str) -> dict[str, str]:
    """What the schema's tables hold in their password columns, by role name."""
    ident = sql.Identifier(schema)
    query = sql.SQL(
        "SELECT role_name, password FROM {}.tally_credentials"
        " UNION ALL SELECT name, password FROM {}.prepared_tallies"
    ).format(ident, ident)
    with psycopg.connect(dsn) as conn:
        return {str(name): str(password) for name, password in conn.execute(query).fetchall()}


@pytest.mark.postgres
async def test_pg_tally_passwords_are_sealed_at_rest(
    pg_dsn: str, backend_factory: Any, tmp_path: Path
) -> None:
    from taleus_hooks.postgres import CredentialsKeyError, PostgresBackend

    key_file = tmp_path / "node" / "pg-credentials.key"
    backend = backend_factory("postgres", prepared=2, prepared_low=0)
    schema = backend.db.schema
    assert backend.tallies.prepare() == 2
    # Two tallies from prepared roles, one created on the spot (none left).
    results = [await backend.database.provision(request_for(f"tally-{i}")) for i in range(3)]
    passwords = [backend.read_credentials(r.database.credentials_ref) for r in results]
    assert all(passwords) and len(set(passwords)) == 3
    for result in results:  # read_tally logs in as the tally's role with its password
        assert backend.read_tally(result) == result.tally
    assert backend.tallies.prepare() == 2  # two more, waiting in prepared_tallies
    stored = stored_passwords(pg_dsn, schema)
    assert len(stored) == 5
    for value in stored.values():
        assert value.startswith("secretbox:v1:")
        assert all(password not in value for password in passwords)
    # A row an older version stored in clear is sealed when a backend opens the schema, and
    # still read.
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.tally_credentials VALUES ('tally_legacy', 'clear-pw-123')"
            ).format(sql.Identifier(schema))
        )
    legacy_ref = f"postgres:{schema}.tally_credentials/tally_legacy"
    assert backend.read_credentials(legacy_ref) == "clear-pw-123"
    again = PostgresBackend(
        pg_dsn, schema=schema, prepared=0, prepared_low=0, credentials_key=TEST_CREDENTIALS_KEY
    )
    try:
        assert stored_passwords(pg_dsn, schema)["tally_legacy"].startswith("secretbox:v1:")
        assert again.read_credentials(legacy_ref) == "clear-pw-123"
        assert again.read_credentials(results[0].database.credentials_ref) == passwords[0]
    finally:
        again.close()
    # Another key (here a key file, created 0600 on first use) opens none of them.
    other = PostgresBackend(
        pg_dsn, schema=schema, prepared=0, prepared_low=0, credentials_key_file=key_file
    )
    try:
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        with pytest.raises(CredentialsKeyError, match="sealed with another one"):
            other.read_credentials(results[0].database.credentials_ref)
    finally:
        other.close()
    # The same key file, read again, gives the same key.
    with PostgresBackend(
        pg_dsn, schema=schema, prepared=0, prepared_low=0, credentials_key_file=key_file
    ) as same:
        assert same.credentials.open(other.credentials.seal("x")) == "x"


def test_pg_credentials_key_file_must_be_private_and_whole(tmp_path: Path) -> None:
    """Refused before any connection: a key file others can read, one holding no key, and
    no key at all."""
    from taleus_hooks.postgres import CredentialsKeyError, PostgresBackend

    unused = "postgresql://nobody@127.0.0.1:1/none"
    key_file = tmp_path / "pg-credentials.key"
    key_file.write_text("00" * 32 + "\n")
    key_file.chmod(0o644)
    with pytest.raises(CredentialsKeyError, match="accessible to other users"):
        PostgresBackend(unused, credentials_key_file=key_file)
    key_file.chmod(0o600)
    key_file.write_text("not a key\n")
    with pytest.raises(CredentialsKeyError, match="does not hold a credentials key"):
        PostgresBackend(unused, credentials_key_file=key_file)
    with pytest.raises(ValueError, match="give one of credentials_key"):
        PostgresBackend(unused)


def test_sqlite_opens_while_a_serving_node_creates_and_removes_files(tmp_path: Path) -> None:
    # invite, tokens and loadtest open the store while serve works in the same data dir: files
    # listed by the permission check may be gone (renamed, deleted) when it looks at them.
    data_dir = tmp_path / "node"
    SqliteBackend(data_dir).close()
    churn = data_dir / "tallies"
    churn.mkdir(exist_ok=True)
    stop = threading.Event()

    def serve_like() -> None:
        n = 0
        while not stop.is_set():
            names = [churn / f"tally-{n}-{k}.partial" for k in range(50)]
            for name in names:
                name.touch(mode=0o644)  # open to others: the check would chmod it
            for name in names:
                name.unlink()
            n += 1

    worker = threading.Thread(target=serve_like)
    worker.start()
    try:
        for _ in range(40):
            SqliteBackend(data_dir).close()
    finally:
        stop.set()
        worker.join()
