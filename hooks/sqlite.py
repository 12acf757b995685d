"""SQLite reference backend: everything one inviter node keeps, in one data directory.

Nothing to install: ``SqliteBackend(data_dir)`` creates (0700) ``data_dir``, or tightens an
existing one the group or others may read, write or enter (everything in it too: 0700
directories, 0600 files; a warning is logged), with

* ``control.sqlite`` — tokens (digests only), reservations, redemptions, provisions;
* ``audit.sqlite`` — the append-only, hash-chained audit log;
* ``tallies/tally-<hash>.sqlite`` — one separate database (0600) per provisioned tally, holding
  its ``draft_tally`` table; ``ProvisionResult.database.endpoint`` is its absolute path.

Both control files run in WAL mode with ``synchronous=FULL`` durability: a hook call returns only
once its transaction is on disk. The hooks' transactions run on the event loop, group-committed;
the waits (SQLite's write lock, the WAL's fsync, checkpoints) happen without blocking it (see
:mod:`taleus_hooks._walsync` for why that is as durable as ``synchronous=FULL``). A second
connection per file serves synchronous callers (administration, recovery, provisioning's file
work) in their own thread. Several processes may open the same data directory (the command line
mints tokens while ``serve`` runs): SQLite's locks serialize them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, TypeVar

from taleus_bootstrap import DatabaseInfo, ProvisionResult, Tally
from taleus_bootstrap._lazy import LazyModule

from ._batching import Batcher
from ._common import Clock, Cursor, RequirementsIdentityValidator, utc_now
from ._groupcommit import MAX_GROUP, GroupCommit
from ._private import PRIVATE_DIR, tighten
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
from ._synchelper import HelperEnded, Syncer, SyncHelper, SyncStep, helper_can_name
from ._walsync import WalSync

if TYPE_CHECKING:
    import trio
else:  # imported on first use: the store's synchronous uses never need it
    trio = LazyModule("trio")

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
logger = logging.getLogger("taleus_hooks.sqlite")
POOL_BATCH: Final = 64
"""Tally files prepared at a time."""
POOL_LOW: Final = 16
"""Prepared tally files left when the next batch is asked for."""
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
    """One SQLite file, two connections (see the module docstring).

    The hooks' calls (:meth:`run`) are group-committed on the event loop's connection: those
    made while a batch is being written share the next one (see
    :mod:`taleus_hooks._groupcommit`). :meth:`write` is one transaction of its own there.
    :meth:`transact` runs in the calling thread on the other connection, which waits for
    SQLite's locks (up to 30 s) and syncs its own commits. ``fsync`` is the function that
    syncs the WAL (``os.fsync``; a test may watch it).
    """

    for_update = ""  # BEGIN IMMEDIATE already holds the write lock for the whole transaction

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL",
        fsync: Callable[[int], None] = os.fsync,
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
        # The event loop's connection: never waits (busy timeout 0), never syncs nor
        # checkpoints itself; WalSync does both (a helper process, a worker thread).
        self._loop_conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=0.0
        )
        self._loop_conn.execute(f"PRAGMA synchronous={'OFF' if synchronous == 'OFF' else 'NORMAL'}")
        self._loop_conn.execute("PRAGMA wal_autocheckpoint=0")
        self._loop_conn.execute("PRAGMA foreign_keys=ON")
        self.wal = WalSync(
            path, checkpoint=self._checkpoint, fsync=fsync, enabled=synchronous == "FULL"
        )
        self.group = GroupCommit(self._loop_conn, self.wal)

    async def run(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` in the next group commit on the event loop; return once it is durable.
        Cancelled before its batch began, nothing of it is done."""
        return await self.group.run(fn)

    async def write(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` as one transaction of its own on the event loop (no other call shares
        it); return once it is durable. Cancelled only while waiting for the write lock, with
        nothing done."""
        return await self.group.alone(fn)

    def _checkpoint(self) -> None:
        """In a worker thread: a passive checkpoint (skipped while the connection is busy)."""
        if self._lock.acquire(blocking=False):
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                self._lock.release()

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
        """Close both connections."""
        self._loop_conn.close()
        self.wal.close()
        with self._lock:
            self._conn.close()


class SqliteTallyFactory:
    """Each tally in its own SQLite file under ``directory`` (mode 0600).

    Creating a file costs 0.2 to 0.5 ms of the disk's time here, so files holding the empty
    draft-tally table are **prepared ahead** by a helper process (a pool of
    :data:`POOL_BATCH`, refilled when fewer than :data:`POOL_LOW` are left). Provisioning writes
    the tally's row into a prepared file on the event loop (into the page cache) and a second
    helper process (:mod:`taleus_hooks._synchelper`) makes it durable: the files of the tallies
    created meanwhile are fsynced, renamed into place and their directory fsynced together.
    Prepared files are named after the process (``prepared-<pid>-*``); those of a process that
    is gone are deleted when the factory starts.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = directory.resolve()
        self._use_helper = helper_can_name(self.directory)
        self._syncer = Syncer("tally files' sync helper", use_helper=self._use_helper)
        self._preparer: SyncHelper | None = None
        self._batcher: Batcher[tuple[Path, Path]] = Batcher(self._settle, MAX_GROUP)
        self._pool: list[Path] = []
        self._refilling = False
        self._closed = False
        self.prepared_used = 0
        """Tallies created in a prepared file (the others were created on the spot)."""
        _remove_orphaned_prepared_files(self.directory)

    def locate(self, tally_id: str) -> DatabaseInfo:
        """The file the tally will live in (named by a hash of its id), an absolute path."""
        name = hashlib.sha256(tally_id.encode()).hexdigest()[:32]
        path = self.directory / f"tally-{name}.sqlite"
        return DatabaseInfo(endpoint=str(path), credentials_ref=CREDENTIALS_REF)

    async def create(self, tally: Tally, database: DatabaseInfo) -> None:
        """Write the file under a temporary name, then rename it into place (atomic).

        The temporary file needs no rollback journal (``journal_mode=OFF``) nor a sync of its
        own at commit: until the rename nobody reads it, and a crash leaves only a ``.partial``
        file that the next attempt replaces. The file is fsynced before the rename and the
        directory after it, so a returned tally database survives a crash.
        """
        path = _free_path(database.endpoint)
        partial = self._take_prepared()
        if partial is not None:
            try:
                _insert_row(partial, tally)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            self.prepared_used += 1
        else:
            partial = self._write_partial(tally, path)
        with trio.CancelScope(shield=True):  # once written, settled whoever waits
            await self._batcher.submit((partial, path))

    @property
    def prepared(self) -> int:
        """Prepared tally files ready for the next provisions."""
        return len(self._pool)

    @property
    def settle_helper_pid(self) -> int | None:
        """The pid of the helper process that settles tally files (None: not started yet, or
        worker threads stand in for it)."""
        return self._syncer.helper_pid

    def _take_prepared(self) -> Path | None:
        if len(self._pool) < POOL_LOW and not self._refilling and self._use_helper:
            self._refilling = True
            trio.lowlevel.spawn_system_task(self._refill)
        return self._pool.pop() if self._pool else None

    async def _refill(self) -> None:
        names = [
            self.directory / f"prepared-{os.getpid()}-{secrets.token_hex(8)}.sqlite"
            for _ in range(POOL_BATCH)
        ]
        ddl = draft_tally_table("draft_tally")
        try:
            if self._preparer is None:
                self._preparer = SyncHelper()
            await self._preparer.run([("P", f"{name}\t{ddl}") for name in names])
            self._pool.extend(names)
        except OSError as exc:  # the next provisions create their files on the spot meanwhile
            if not self._closed:  # (closing ends the helper's request in flight: not a fault)
                logger.warning("could not prepare tally files", exc_info=True)
            for name in names:
                name.unlink(missing_ok=True)
            if isinstance(exc, HelperEnded) and self._preparer is not None:
                self._preparer.close()
                self._preparer = None  # the next refill starts a new one
        finally:
            self._refilling = False

    @staticmethod
    def _write_partial(tally: Tally, path: Path) -> Path:
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(partial, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("BEGIN")
            conn.execute(draft_tally_table("draft_tally"))
            conn.execute("INSERT INTO draft_tally VALUES (?, ?, ?, ?, ?)", draft_tally_row(tally))
            conn.execute("COMMIT")
        finally:
            conn.close()
        return partial

    async def _settle(self, files: list[tuple[Path, Path]]) -> None:
        """fsync each file, rename each into place, fsync the directory: one helper request."""
        steps: list[SyncStep] = [("F", str(partial)) for partial, _ in files]
        steps += [("R", f"{partial}\t{path}") for partial, path in files]
        steps.append(("D", str(self.directory)))
        with trio.CancelScope(shield=True):
            await self._syncer.run(steps)

    def drop(self, database: DatabaseInfo) -> None:
        """Delete the file (and any partial or journal file next to it)."""
        path = Path(database.endpoint)
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.with_suffix(".partial").unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the helper processes; delete the prepared files left."""
        self._closed = True
        self._syncer.close()
        if self._preparer is not None:
            self._preparer.close()
            self._preparer = None
        for path in self._pool:
            path.unlink(missing_ok=True)
        self._pool.clear()


def _free_path(endpoint: str) -> Path:
    """The tally file's path; raises ``FileExistsError`` if it is taken (a cached stat)."""
    path = Path(endpoint)
    if path.exists():
        raise FileExistsError(f"tally database {path.name} already exists")
    return path


def _insert_row(path: Path, tally: Tally) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("INSERT INTO draft_tally VALUES (?, ?, ?, ?, ?)", draft_tally_row(tally))
    finally:
        conn.close()


def _remove_orphaned_prepared_files(directory: Path) -> None:
    """Delete the prepared files of processes that are gone (they may hold the row of a
    provision that never returned: never durable, never renamed into place)."""
    for path in directory.glob("prepared-*.sqlite"):
        try:
            pid = int(path.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError):
            continue


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
    unacknowledged; ``owner`` names the process whose sessions in flight the log records (each
    worker of ``serve --workers`` has its own, so that each recovers only what it left open).
    Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        clock: Clock = utc_now,
        reservation_lease: timedelta = DEFAULT_RESERVATION_LEASE,
        provision_ttl: timedelta = DEFAULT_PROVISION_TTL,
        synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL",
        owner: str = DEFAULT_OWNER,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        opened = tighten(self.data_dir)
        if opened:
            logger.warning(
                "data directory %s was open to other users: made %d path(s) private (0700"
                " directories, 0600 files)",
                self.data_dir,
                len(opened),
            )
        self.control = SqliteDatabase(self.data_dir / "control.sqlite", synchronous=synchronous)
        self.control.executescript(control_tables("REAL"))
        self.audit_db = SqliteDatabase(self.data_dir / "audit.sqlite", synchronous=synchronous)
        self.audit_db.executescript(audit_tables("REAL", "INTEGER", GENESIS_HASH) + AUDIT_TRIGGERS)
        self.tokens = SqlTokenStore(self.control, clock=clock, reservation_lease=reservation_lease)
        self.tallies = SqliteTallyFactory(self.data_dir / "tallies")
        self.database = SqlProvisioner(
            self.control,
            self.tallies,
            clock=clock,
            provision_ttl=provision_ttl,
        )
        self.identity = RequirementsIdentityValidator()
        self.audit = SqlAuditLog(self.audit_db, owner=owner)

    def read_tally(self, result: ProvisionResult) -> Tally | None:
        """Read back the draft tally of a provision through its endpoint (None if gone)."""
        return read_draft_tally(result.database.endpoint)

    def close(self) -> None:
        """Close both connections and stop the helper processes."""
        self.control.close()
        self.audit_db.close()
        self.tallies.close()

    def __enter__(self) -> SqliteBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
