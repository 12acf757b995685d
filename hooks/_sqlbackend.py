"""What the SQLite and PostgreSQL backends share: the four hooks bundled, maintenance, and
recovery after a crash."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, cast

from taleus_bootstrap import (
    AuditEvent,
    AwaitingDecision,
    BootstrapResult,
    OutcomeResolved,
    Rejection,
    RejectionCode,
    SessionOutcome,
)
from taleus_bootstrap._events import Side
from taleus_bootstrap._lazy import LazyModule

from ._common import HookBundle, RequirementsIdentityValidator
from ._sqlaudit import OpenSession, SqlAuditLog
from ._sqlprovision import ProvisionRecord, SqlProvisioner
from ._sqltokens import SqlTokenStore

if TYPE_CHECKING:
    import trio
else:  # imported on first use: the store's synchronous uses never need it
    trio = LazyModule("trio")

__all__ = ["ABORTED", "MaintenanceReport", "RecoveryReport", "SqlBackend"]

logger = logging.getLogger("taleus_hooks.maintenance")

ABORTED: Final = "ABORTED"
"""``SessionOutcome.final_state`` of a session closed by :meth:`SqlBackend.recover`."""
ABORTED_DETAIL: Final = "the node stopped while this session was in flight; closed at restart"


@dataclass(frozen=True)
class MaintenanceReport:
    """What one :meth:`SqlBackend.sweep` did."""

    reservations_reclaimed: int
    tallies_swept: tuple[str, ...]


@dataclass(frozen=True)
class RecoveryReport:
    """What one :meth:`SqlBackend.recover` closed."""

    sessions_aborted: tuple[str, ...]
    reservations_settled: int
    provisions_released: tuple[str, ...]


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

    async def _session_events(self, session_id: str) -> list[AuditEvent]:
        return await trio.to_thread.run_sync(self.audit.for_session, session_id)

    @property
    def provisioner(self) -> SqlProvisioner:
        """Alias of :attr:`database`."""
        return self.database

    async def sweep(self) -> MaintenanceReport:
        """Reclaim reservations whose lease ran out and remove provisions left unacknowledged
        past the provision TTL.

        First, a session among them that the audit log shows *completed* — its ``mark_used``
        and its tally's ``commit`` both failed after the last frame, e.g. the store was stalled
        then — is settled as completed, as :meth:`recover` settles one: its pending provisions
        are committed and its reservation redeemed (never released, its tally never swept)."""
        await trio.to_thread.run_sync(self._settle_completed)
        reclaimed = await trio.to_thread.run_sync(self.tokens.reclaim_expired)
        doubt = await trio.to_thread.run_sync(self.in_doubt)
        swept = await self.database.sweep(keep={r.tally.tally_id for r in doubt})
        return MaintenanceReport(reclaimed, tuple(swept))

    def in_doubt(self) -> list[BootstrapResult]:
        """This node's bootstraps *as invitee* whose outcome only the inviter can tell: their
        decisive frame was (or may have been) sent, and their tally is neither committed nor
        released (a crash, or an unconfirmed outcome not yet resolved). Each is the unconfirmed
        result to settle with :func:`~taleus_bootstrap.resolve_bootstrap` (``taleus-bootstrap
        resolve`` does); until then the sweep keeps their tallies."""
        found: list[BootstrapResult] = []
        for session_id in self.audit.awaiting_decision():
            events = self.audit.for_session(session_id)
            if any(isinstance(e, OutcomeResolved) for e in events):
                continue
            [pending] = [e for e in events if isinstance(e, AwaitingDecision)][-1:]
            records = self.database.records("tally_id = ?", pending.tally_id)
            if not records or records[0].state != "pending":
                continue
            found.append(_unconfirmed_result(session_id, pending, records[0]))
        return found

    def _settle_completed(self) -> None:
        """See :meth:`sweep`."""
        lapsed = set(self.tokens.lapsed_sessions()) | set(self.database.stale_sessions())
        completed = sorted(sid for sid in lapsed if self._completed(sid))
        if completed:
            self.database.commit_sessions(completed)
            self.tokens.release_sessions(completed)  # redeemed: their tallies are committed
            logger.warning(
                "settled %d completed session(s) whose token use and commit had failed",
                len(completed),
            )

    def _completed(self, session_id: str) -> bool:
        """Whether the audit log holds a completed outcome of ``session_id``."""
        return any(
            event.kind == "session_outcome" and event.final_state == "COMPLETED"
            for event in self.audit.for_session(session_id)
        )

    async def run_maintenance(
        self,
        interval: float = 60.0,
        *,
        task_status: Any = None,
    ) -> None:
        """Sweep now, then every ``interval`` seconds, until cancelled (``nursery.start`` it).

        The first sweep's error is raised (the store does not work at start). A later sweep
        that fails (the store unreachable for a while) is logged, and the next one tries again:
        the node it serves must not stop for it."""
        await self.sweep()
        if task_status is not None:  # nursery.start() passes one
            task_status.started()
        while True:
            await trio.sleep(interval)
            try:
                await self.sweep()
            except Exception as exc:
                logger.warning("maintenance sweep failed (%s: %s); next in %g s",
                               type(exc).__name__, exc, interval)  # fmt: skip

    async def recover(self, owners: Sequence[str] | None = None) -> RecoveryReport:
        """Close what a previous run of this node left in flight; call once at start-up,
        before serving (``serve`` does).

        For each session the audit log still has open (started, no outcome) under this
        backend's owner (or under ``owners``: those of processes known to be gone, e.g. the
        workers of an earlier ``serve --workers``; never an owner still serving):

        * if it had *completed* — its token use was recorded (``mark_used`` runs only once the
          tally is formed: after the ack in the stock flow, just before sending it in the foil
          flow) or its tally was committed — its pending provisions are committed and its
          reservation is redeemed;
        * otherwise its reservation is released and its pending provisions are released (a
          tally database made for it is dropped);
        * either way it is closed in the audit log with a ``Rejection`` (direction ``none``,
          ``internal_error``) and a ``SessionOutcome`` whose ``final_state`` is ``ABORTED``,
          with the ``tally_id`` of a completed session.

        Resources are settled before the outcome is written, and completed sessions committed
        before reservations are settled, so a crash during recovery leaves the sessions open
        for the next one to finish the same way.
        """
        left = await trio.to_thread.run_sync(self.audit.open_sessions, owners)
        ids = [session.session_id for session in left]
        if not ids:
            return RecoveryReport((), 0, ())
        tallies = await trio.to_thread.run_sync(self._committed_tallies, ids)
        completed = set(tallies) | await trio.to_thread.run_sync(self.tokens.redeemed_sessions, ids)
        for record in await trio.to_thread.run_sync(
            self.database.commit_sessions, sorted(completed)
        ):
            tallies[record.session_id] = record.tally_id
        settled = await trio.to_thread.run_sync(self.tokens.release_sessions, ids)
        unfinished = [sid for sid in ids if sid not in completed]
        released = await trio.to_thread.run_sync(self.database.release_sessions, unfinished)
        for session in left:
            await self._close_aborted(session, tallies.get(session.session_id))
        return RecoveryReport(tuple(ids), settled, tuple(r.tally_id for r in released))

    def _committed_tallies(self, session_ids: list[str]) -> dict[str, str]:
        """``{session id: tally id}`` of those sessions whose tally is committed."""
        where = "session_id = ? AND state = 'committed'"
        return {
            r.session_id: r.tally_id
            for sid in session_ids
            for r in self.database.records(where, sid)
        }

    async def _close_aborted(self, session: OpenSession, tally_id: str | None) -> None:
        now = datetime.now(UTC)
        side = cast(Side, session.side)
        code = RejectionCode.INTERNAL_ERROR
        rejection = Rejection(at=now, side=side, code=code, direction="none", detail=ABORTED_DETAIL)
        outcome = SessionOutcome(
            at=now,
            side=side,
            final_state=ABORTED,
            code=code,
            role=None,
            tally_id=tally_id,
            duration_s=max(0.0, (now - session.started_at).total_seconds()),
        )
        await self.audit.log_events(session.session_id, (rejection, outcome))


def _unconfirmed_result(
    session_id: str, pending: AwaitingDecision, record: ProvisionRecord
) -> BootstrapResult:
    inviter_role = pending.inviter_role
    return BootstrapResult(
        session_id=pending.inviter_session_id,
        local_session_id=session_id,
        tally=record.provision.tally,
        database=record.provision.database,
        inviter_role=inviter_role,
        invitee_role="foil" if inviter_role == "stock" else "stock",
        inviter_party_id=pending.inviter_peer_id,
        inviter_cadre_addrs=(),
        provisioned_by="inviter" if record.origin == "remote" else "invitee",
        responder_addr=pending.inviter_addr,
        transitions=(),
        confirmed=False,
    )
