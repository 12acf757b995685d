"""SQLite reference backend: everything one inviter node keeps, in one data directory.

Nothing to install: ``SqliteBackend(data_dir)`` creates (0700) ``data_dir`` with

* ``control.sqlite`` — tokens (digests only), reservations, redemptions, provisions;
* ``audit.sqlite`` — the append-only, hash-chained audit log;
* ``tallies/tally-<hash>.sqlite`` — one separate database (0600) per provisioned tally, holding
  its ``draft_tally`` table; ``ProvisionResult.database.endpoint`` is its absolute path.

Both control files run in WAL mode with ``synchronous=FULL``: a write has reached the disk before
the session moves on. Each file has one connection, used by one thread at a time (the writer); all
calls run in worker threads, never on the event loop. Several processes may open the same data
directory (the command line mints tokens while ``serve`` runs): SQLite's locks serialize them.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Final, Literal, TypeVar

from taleus_bootstrap import DatabaseInfo, ProvisionResult, Tally

from ._common import Clock, Cursor, RequirementsIdentityValidator, utc_now
from ._groupcommit import GroupCommit
from ._sqlaudit import GENESIS_HASH, AuditWriteError, ChainReport, SqlAuditLog, chain_hash
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
    "RecoveryReport",
    "SqlAuditLog",
    "SqlProvisioner",
    "SqlTokenStore",
    "chain_hash",
    "SqliteBackend",
    "SqliteDatabase",
    "SqliteTallyFactory",
    "read_draft_tally",
]

T = TypeVar("T")
CREDENTIALS_REF: Final = "sqlite:file-permissions"
"""A SQLite tally has no password: access is the file's permissions (0600)."""


AUDIT_TRIGGERS: Final = """
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_head_forward_only BEFORE UPDATE ON audit_head
WHEN NEW.seq < OLD.seq BEGIN SELECT RAISE(ABORT, 'audit_head only moves forward'); END;
CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON audit_head
BEGIN SELECT RAISE(ABORT, 'audit_head cannot be deleted'); END;
"""


class SqliteDatabase:
    """One SQLite file: one connection, one transaction at a time (``BEGIN IMMEDIATE``).

    The hooks' calls (:meth:`run`) are group-committed: those made while a commit is under way
    share the next one (see :mod:`taleus_hooks._groupcommit`).
    """

    for_update = ""  # BEGIN IMMEDIATE already holds the write lock for the whole transaction

    def __init__(
        self, path: Path, *, synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL"
    ) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA foreign_keys=ON")
        os.chmod(path, 0o600)
        self.group = GroupCommit(self._conn, self._lock)

    async def run(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` off the event loop in the next group commit; return once it is durable."""
        return await self.group.run(fn)

    def executescript(self, script: str) -> None:
        """Run DDL (idempotent scripts only)."""
        with self._lock:
            self._conn.executescript(script)

    def transact(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction, in the calling thread."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                result = fn(cur)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            return result

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


class SqliteTallyFactory:
    """Each tally in its own SQLite file under ``directory`` (mode 0600)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = directory.resolve()

    def locate(self, tally_id: str) -> DatabaseInfo:
        """The file the tally will live in (named by a hash of its id), an absolute path."""
        name = hashlib.sha256(tally_id.encode()).hexdigest()[:32]
        path = self.directory / f"tally-{name}.sqlite"
        return DatabaseInfo(endpoint=str(path), credentials_ref=CREDENTIALS_REF)

    def create(self, tally: Tally, database: DatabaseInfo) -> None:
        """Write the file under a temporary name, then rename it into place (atomic).

        The temporary file needs no rollback journal (``journal_mode=OFF``): until the rename
        nobody reads it, and a crash leaves only a ``.partial`` file that the next attempt
        replaces. The file is fsynced before the rename and the directory after it, so a
        returned tally database survives a crash.
        """
        path = Path(database.endpoint)
        if path.exists():
            raise FileExistsError(f"tally database {path.name} already exists")
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(partial, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN")
            conn.execute(draft_tally_table("draft_tally"))
            conn.execute("INSERT INTO draft_tally VALUES (?, ?, ?, ?, ?)", draft_tally_row(tally))
            conn.execute("COMMIT")
        finally:
            conn.close()
        os.replace(partial, path)
        _fsync_directory(path.parent)

    def drop(self, database: DatabaseInfo) -> None:
        """Delete the file (and any partial or journal file next to it)."""
        path = Path(database.endpoint)
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.with_suffix(".partial").unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_draft_tally(endpoint: str) -> Tally | None:
    """Open a SQLite tally database by its endpoint (read-only) and read its draft tally."""
    path = Path(endpoint)
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return tally_from_row(conn.execute(DRAFT_TALLY_SELECT).fetchone())
    finally:
        conn.close()


class SqliteBackend(SqlBackend):
    """The token, identity, database and audit hooks of one node, in ``data_dir``.

    ``clock`` drives token expiry, leases and the sweep; ``reservation_lease`` is how long an
    abandoned reservation blocks a use; ``provision_ttl`` is how long a provision may stay
    unacknowledged. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        clock: Clock = utc_now,
        reservation_lease: timedelta = DEFAULT_RESERVATION_LEASE,
        provision_ttl: timedelta = DEFAULT_PROVISION_TTL,
        synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.control = SqliteDatabase(self.data_dir / "control.sqlite", synchronous=synchronous)
        self.control.executescript(control_tables("REAL"))
        self.audit_db = SqliteDatabase(self.data_dir / "audit.sqlite", synchronous=synchronous)
        self.audit_db.executescript(audit_tables("REAL", "INTEGER", GENESIS_HASH) + AUDIT_TRIGGERS)
        self.tokens = SqlTokenStore(self.control, clock=clock, reservation_lease=reservation_lease)
        self.database = SqlProvisioner(
            self.control,
            SqliteTallyFactory(self.data_dir / "tallies"),
            clock=clock,
            provision_ttl=provision_ttl,
        )
        self.identity = RequirementsIdentityValidator()
        self.audit = SqlAuditLog(self.audit_db)

    def read_tally(self, result: ProvisionResult) -> Tally | None:
        """Read back the draft tally of a provision through its endpoint (None if gone)."""
        return read_draft_tally(result.database.endpoint)

    def close(self) -> None:
        """Close both connections."""
        self.control.close()
        self.audit_db.close()

    def __enter__(self) -> SqliteBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
