"""Opening a node's store (SQLite in its data directory, or PostgreSQL) from the settings.

Which backend a data directory uses is decided, in this order, by ``--backend``, the config
file's ``[backend] kind``, and the kind ``serve`` recorded in ``node.json`` at its last start, so
that ``invite``/``tokens``/``audit`` never mint into or read a store other than the one ``serve``
uses. The DSN is never recorded; ``--dsn``, ``TALEUS_BOOTSTRAP_DSN`` or the config file give it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ._errors import CliError, ExitCode
from ._nodedir import NodeDir
from ._settings import BackendSettings, Settings

__all__ = ["open_backend", "resolve_backend", "sqlite_backend"]


def resolve_backend(
    settings: Settings,
    node: NodeDir,
    *,
    kind: str | None,
    dsn: str | None,
    serving: bool = False,
) -> BackendSettings:
    """The backend settings after ``--backend`` / ``--dsn`` and the node's recorded kind
    (``serve`` may switch a node to another kind; the other commands may not)."""
    backend = settings.backend
    updates: dict[str, Any] = {}
    state = node.read_state()
    explicit = kind is not None or "kind" in backend.model_fields_set
    if kind is not None:
        updates["kind"] = kind
    elif not explicit and state is not None:
        updates["kind"] = state.backend
        if state.schema_name is not None and "schema_name" not in backend.model_fields_set:
            updates["schema_name"] = state.schema_name
    if dsn:
        updates["dsn"] = SecretStr(dsn)
    resolved = backend.model_copy(update=updates)
    if state is not None and explicit and resolved.kind != state.backend and not serving:
        raise CliError(
            f"{node.path} was last served with the {state.backend} backend, not "
            f"{resolved.kind}; pass --backend {state.backend}",
            ExitCode.USAGE,
        )
    if resolved.kind == "postgres" and resolved.dsn is None:
        raise CliError(
            "the postgres backend needs a DSN: --dsn, TALEUS_BOOTSTRAP_DSN or "
            "[backend] dsn in the config file",
            ExitCode.USAGE,
        )
    return resolved


def sqlite_backend(data_dir: Path, **options: Any) -> Any:
    """A ``taleus_hooks.sqlite.SqliteBackend`` (imported by name: ``taleus_hooks`` is the
    ``hooks/`` directory, which the type checker sees under that name)."""
    return importlib.import_module("taleus_hooks.sqlite").SqliteBackend(data_dir, **options)


@contextmanager
def open_backend(
    node: NodeDir, backend: BackendSettings, *, owner: str | None = None
) -> Iterator[Any]:
    """The node's :class:`~taleus_hooks.sqlite.SqliteBackend` or ``PostgresBackend``; closed
    when the block ends. ``owner``: the serving process's name in the store (its sessions in
    flight are its own to recover): the node's in a shared PostgreSQL store, a worker's in
    either (see :func:`~taleus_bootstrap.cli._workers.store_owner`)."""
    lease = timedelta(seconds=backend.reservation_lease)
    ttl = timedelta(seconds=backend.provision_ttl)
    if backend.kind == "sqlite":
        try:
            store = sqlite_backend(
                node.path,
                reservation_lease=lease,
                provision_ttl=ttl,
                **({"owner": owner} if owner is not None else {}),
            )
        except Exception as exc:  # sqlite3.Error, OSError
            raise CliError(f"cannot open the SQLite store in {node.path}: {exc}") from None
    else:
        store = _open_postgres(backend, lease, ttl, owner, node.path)
    try:
        yield store
    finally:
        store.close()


def _open_postgres(
    backend: BackendSettings, lease: timedelta, ttl: timedelta, owner: str | None, data_dir: Path
) -> Any:
    """The ``PostgresBackend``; its tally passwords sealed with the key file the data directory
    keeps (``pg-credentials.key``, created on first use)."""
    try:
        import psycopg

        postgres = importlib.import_module("taleus_hooks.postgres")
    except ImportError:
        raise CliError(
            "the postgres backend needs psycopg: pip install 'taleus-bootstrap[postgres]'",
            ExitCode.USAGE,
        ) from None
    assert backend.dsn is not None
    try:
        return postgres.PostgresBackend(
            backend.dsn.get_secret_value(),
            schema=backend.schema_name,
            reservation_lease=lease,
            provision_ttl=ttl,
            pool_size=backend.pool_size,
            credentials_key_file=data_dir / postgres.KEY_FILE_NAME,
            **({"owner": owner} if owner is not None else {}),
        )
    except postgres.CredentialsKeyError as exc:
        raise CliError(f"cannot open the PostgreSQL store: {exc}") from None
    except (psycopg.Error, OSError) as exc:
        # psycopg's messages name the host, port and user, never the password.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"cannot open the PostgreSQL store: {first_line}") from None
