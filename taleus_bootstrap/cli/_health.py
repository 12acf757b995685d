"""``serve``'s health for orchestrators: ``/healthz`` (liveness), ``/readyz`` (readiness) and
what ``/status`` says about the process (version, uptime, backend, data directory)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__

if TYPE_CHECKING:
    from .._manager import SessionManager

__all__ = ["ServeState", "liveness", "readiness"]

Page = tuple[str, bytes, int]


@dataclass
class ServeState:
    """What a running ``serve`` knows about itself beyond its session manager."""

    backend: str
    """The store: ``sqlite``, ``postgres``, or the name of custom hooks."""
    data_dir: Path
    version: str = __version__
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _started: float = field(default_factory=time.monotonic, repr=False)
    draining: bool = False
    """Set when the first SIGINT/SIGTERM starts the drain."""
    worker: int | None = None
    """The worker's index under ``serve --workers`` (None: a single ``serve``)."""

    def uptime_s(self) -> float:
        """Seconds since ``serve`` started."""
        return time.monotonic() - self._started

    def phase(self, manager: SessionManager) -> str:
        """``starting`` (not accepting streams yet), ``serving`` or ``draining``."""
        if self.draining:
            return "draining"
        return "serving" if manager.statistics().accepting else "starting"

    def document(self, manager: SessionManager) -> dict[str, Any]:
        """The fields ``/status`` adds about the process."""
        return {
            "version": self.version,
            "phase": self.phase(manager),
            "started_at": self.started_at.isoformat(),
            "uptime_seconds": round(self.uptime_s(), 3),
            "backend": self.backend,
            "data_dir": str(self.data_dir.resolve()),
            **(
                {"worker": {"index": self.worker, "pid": os.getpid()}}
                if self.worker is not None
                else {}
            ),
        }


def liveness(state: ServeState, manager: SessionManager) -> Page:
    """``/healthz``: 200 whenever the process answers, draining included (its event loop runs
    this page, so an answer shows that the loop is responsive); a liveness probe that fails
    only when this does not answer restarts a hung process, never a draining one."""
    body = {"alive": True, "phase": state.phase(manager),
            "uptime_seconds": round(state.uptime_s(), 3)}  # fmt: skip
    return "application/json", json.dumps(body).encode() + b"\n", 200


def readiness(state: ServeState, manager: SessionManager) -> Page:
    """``/readyz``: 200 while the node accepts streams and its store breaker is closed (or
    off), else 503 with the reasons, for orchestrators and load balancers."""
    stats = manager.statistics()
    phase = state.phase(manager)
    reasons = []
    if phase == "draining":
        reasons.append("draining: new streams get shutting_down")
    elif phase == "starting":
        reasons.append("starting: not accepting streams yet")
    if stats.store_breaker not in ("closed", "off"):
        reasons.append(f"store unhealthy: store breaker {stats.store_breaker}")
    body = {"ready": not reasons, "phase": phase, "reasons": reasons,
            "store_breaker": stats.store_breaker}  # fmt: skip
    return "application/json", json.dumps(body).encode() + b"\n", 503 if reasons else 200
