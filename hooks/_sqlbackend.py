"""What the SQLite and PostgreSQL backends share: the four hooks bundled, and maintenance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from ._common import HookBundle, RequirementsIdentityValidator
from ._sqlaudit import SqlAuditLog
from ._sqlprovision import SqlProvisioner
from ._sqltokens import SqlTokenStore

__all__ = ["MaintenanceReport", "SqlBackend"]


@dataclass(frozen=True)
class MaintenanceReport:
    """What one :meth:`SqlBackend.sweep` did."""

    reservations_reclaimed: int
    tallies_swept: tuple[str, ...]


class SqlBackend(HookBundle):
    """The four hooks of one node on one SQL store, plus the sweep that keeps it clean.

    ``tokens`` (token hook and administration), ``database`` (database hook), ``identity``
    (requirements policy) and ``audit`` (hash-chained log). :meth:`hooks` bundles them for a
    :class:`~taleus_bootstrap.SessionManager`, :meth:`invitee_hooks` for
    :func:`~taleus_bootstrap.initiate_bootstrap`.
    """

    tokens: SqlTokenStore
    database: SqlProvisioner
    identity: RequirementsIdentityValidator
    audit: SqlAuditLog

    @property
    def provisioner(self) -> SqlProvisioner:
        """Alias of :attr:`database`."""
        return self.database

    async def sweep(self) -> MaintenanceReport:
        """Reclaim reservations whose lease ran out and remove provisions left unacknowledged
        past the provision TTL."""
        reclaimed = await trio.to_thread.run_sync(self.tokens.reclaim_expired)
        swept = await self.database.sweep()
        return MaintenanceReport(reclaimed, tuple(swept))

    async def run_maintenance(
        self,
        interval: float = 60.0,
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sweep now, then every ``interval`` seconds, until cancelled (``nursery.start`` it)."""
        await self.sweep()
        task_status.started()
        while True:
            await trio.sleep(interval)
            await self.sweep()
