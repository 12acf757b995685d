"""``serve --workers N``: what one worker process is, and how the node's limits and its store's
sessions in flight are split between the workers.

The supervisor (:mod:`._supervisor`) starts each worker as ``serve`` again, with
:data:`WORKER_ENV` set to ``INDEX/COUNT/START`` (``START``: ``fresh`` for worker 0's first
start, before any other worker runs, else ``restart``). A worker:

* holds no serve lock (its supervisor does) and records no ``node.json`` (its supervisor does);
* listens on the node's port shared with the other workers (``SO_REUSEPORT``), except worker 0's
  fresh start, which checks that no other process holds the port and picks it when it is 0;
* records its sessions in flight under an owner of its own (:func:`store_owner`), so that a
  worker restarted after a crash recovers what *it* left open, never a live session of another;
  worker 0's fresh start also recovers what any earlier run of the node left open
  (:func:`stale_owners`);
* serves its share of the session cap and the global rate (:func:`split_manager`).
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .._config import ManagerConfig
from ._errors import CliError, ExitCode

if TYPE_CHECKING:
    from ._nodedir import NodeDir

__all__ = [
    "WORKER_ENV",
    "WorkerRole",
    "check_supervised",
    "drain_when_orphaned",
    "recover_stale",
    "refuse_process_local",
    "split_count",
    "split_manager",
    "stale_owners",
    "store_owner",
    "tag_worker_logs",
    "worker_role",
]

logger = logging.getLogger("taleus_bootstrap.cli")

WORKER_ENV: Final = "TALEUS_BOOTSTRAP_WORKER"
"""Set by the supervisor in each worker's environment: ``INDEX/COUNT/fresh|restart``."""
SQLITE_OWNER: Final = "local"
"""The owner a single ``serve`` records its SQLite sessions in flight under (the store's
default)."""
WORKER_SUFFIX: Final = "#w"


@dataclass(frozen=True)
class WorkerRole:
    """This process is worker ``index`` of ``count``; ``fresh``: worker 0's first start."""

    index: int
    count: int
    fresh: bool

    @property
    def shares_port(self) -> bool:
        """Whether the port is held by another worker already (all but a fresh worker 0)."""
        return not self.fresh


def worker_role() -> WorkerRole | None:
    """The role :data:`WORKER_ENV` gives this process (None: a plain ``serve``)."""
    spec = os.environ.get(WORKER_ENV)
    if not spec:
        return None
    try:
        index, count, start = spec.split("/")
        role = WorkerRole(int(index), int(count), start == "fresh")
    except ValueError:
        raise CliError(f"{WORKER_ENV}={spec!r}: expected INDEX/COUNT/fresh|restart") from None
    if not 0 <= role.index < role.count or start not in ("fresh", "restart"):
        raise CliError(f"{WORKER_ENV}={spec!r}: expected INDEX/COUNT/fresh|restart")
    return role


def check_supervised(node: NodeDir) -> None:
    """A worker runs only under a supervisor holding the data directory's serve lock."""
    if not node.serve_running():
        raise CliError(
            f"{WORKER_ENV} is set but no serve --workers holds {node.path}: a worker runs only "
            "under its supervisor (unset the variable)",
            ExitCode.USAGE,
        )


def store_owner(node: NodeDir, kind: str, role: WorkerRole | None) -> str:
    """The owner this process records its sessions in flight under: the node's (``local`` in
    a SQLite data directory, ``<peer id>/<data dir id>`` in a PostgreSQL schema other nodes may
    share), with ``#w<index>`` for a worker."""
    base = node.owner() if kind == "postgres" else SQLITE_OWNER
    return base if role is None else f"{base}{WORKER_SUFFIX}{role.index}"


def stale_owners(open_owners: dict[str, int], own: str, base: str) -> list[str]:
    """The owners of ``open_owners`` that belong to this node (``base``, or a worker's
    ``base#w<k>``) other than ``own``: at a fresh start, no process of the node runs, so what
    they left open is stale (an earlier ``serve``, or workers of a larger ``--workers``)."""
    prefix = base + WORKER_SUFFIX
    return sorted(
        name
        for name in open_owners
        if name != own and (name == base or (name.startswith(prefix) and name[len(prefix) :]))
    )


def owner_base(owner: str) -> str:
    """``local#w1`` -> ``local``; a node's owner is its own base."""
    return owner.split(WORKER_SUFFIX, 1)[0]


def split_count(total: int, index: int, count: int) -> int:
    """Worker ``index``'s share of ``total`` split over ``count``: the first ``total % count``
    workers get one more (ceil), the others the floor; at least 1 each."""
    share = total // count + (1 if index < total % count else 0)
    return max(1, share)


def split_manager(config: ManagerConfig, role: WorkerRole | None) -> ManagerConfig:
    """The worker's share of the node's limits: ``max_concurrent_sessions`` and
    ``global_burst`` split with :func:`split_count`, ``global_rate_per_s`` divided evenly. The
    per-peer limits stay as they are: each worker limits the peers it sees (a peer's streams may
    land on any worker, so a peer gets up to ``count`` times its per-peer allowance)."""
    if role is None or role.count == 1:
        return config
    updates: dict[str, Any] = {
        "max_concurrent_sessions": split_count(
            config.max_concurrent_sessions, role.index, role.count
        ),
        "global_burst": split_count(config.global_burst, role.index, role.count),
        "global_rate_per_s": config.global_rate_per_s / role.count,
    }
    return config.model_copy(update=updates)


PROCESS_LOCAL: Final = ("taleus_hooks.memory", "taleus_bootstrap.loadtest.server")
"""Modules whose hooks keep their state in the process: workers could not share it."""


def refuse_process_local(backend: Any, hooks: Any, spec: str) -> None:
    """A worker refuses custom hooks that keep tokens and tallies in the process's memory
    (``taleus_hooks.memory``): each worker would have a store of its own, so a link minted in
    one would be unknown to the others."""
    parts = [backend, hooks, *(getattr(hooks, name, None) for name in ("tokens", "database"))]
    for part in parts:
        module = type(part).__module__
        if part is not None and module.startswith(PROCESS_LOCAL):
            raise CliError(
                f"--hooks {spec}: {type(part).__name__} keeps its state in one process, which "
                "the workers of serve --workers cannot share; use the sqlite or postgres store "
                "(or --workers 1)",
                ExitCode.USAGE,
            )


class _WorkerTag(logging.Filter):
    """Names the worker in each record's logger: ``taleus_bootstrap.manager[worker 1]``."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.suffix = f"[worker {index}]"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith(self.suffix):
            record.name += self.suffix
        return True


def tag_worker_logs(role: WorkerRole) -> None:
    """Every log line of this worker names it (after ``setup_logging``)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(role.index))


async def drain_when_orphaned(parent: int) -> None:
    """In a worker: drain (as on SIGTERM) once the supervisor ``parent`` is gone (killed with
    ``-9``: it could not tell the worker), checked every second."""
    import trio

    while os.getppid() == parent:  # noqa: ASYNC110 (no event tells a parent died)
        await trio.sleep(1.0)
    logger.warning("the supervisor (pid %d) is gone: draining", parent)
    os.kill(os.getpid(), signal.SIGTERM)


async def recover_stale(backend: Any, own: str) -> None:
    """At a fresh start: close the sessions that earlier processes of this node left open
    under owners other than ``own`` (see :func:`stale_owners`); ``serve_backend`` then
    recovers ``own``'s. A backend without ``audit.open_owners`` and ``recover`` is left alone."""
    import trio

    open_owners = getattr(getattr(backend, "audit", None), "open_owners", None)
    recover = getattr(backend, "recover", None)
    if not callable(open_owners) or not callable(recover):
        return
    owners = stale_owners(await trio.to_thread.run_sync(open_owners), own, owner_base(own))
    if not owners:
        return
    report = await recover(owners)
    logger.warning(
        "recovered %d session(s) left in flight by earlier processes of this node (%s)",
        len(report.sessions_aborted),
        ", ".join(owners),
    )
