"""Explaining rejections: one WARNING line per rejected session, rate-limited per code.

A line names the session, the code, the limit involved and its current usage (for ``busy`` and
``rate_limited``), the peer id's digest (never the peer id) and the detail. Each code may log
:data:`LINES_PER_WINDOW` lines per :data:`WINDOW_S` seconds; what is dropped beyond that is
counted and reported by the next line of that code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ._driver import SessionRecord
from ._errors import RejectionCode
from ._telemetry import peer_digest

__all__ = ["LINES_PER_WINDOW", "WINDOW_S", "Refusal", "RejectionExplainer"]

LINES_PER_WINDOW: Final = 10
WINDOW_S: Final = 10.0


@dataclass(frozen=True)
class Refusal:
    """Why the manager refused a stream before reading it, and the limit it hit."""

    code: RejectionCode
    retry_after_s: float | None
    detail: str
    limit: str = "-"
    usage: str = "-"


class RejectionExplainer:
    """Logs rejected sessions at WARNING, at most ``lines`` per code per ``window`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        lines: int = LINES_PER_WINDOW,
        window: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger, self._lines, self._window, self._clock = logger, lines, window, clock
        self._windows: dict[str, tuple[float, int, int]] = {}  # code -> (start, logged, dropped)

    def explain(self, record: SessionRecord, refusal: Refusal | None = None) -> bool:
        """Log why ``record`` was rejected, unless its code is over its budget; True if logged."""
        assert record.code is not None
        code, now = record.code.value, self._clock()
        start, logged, dropped = self._windows.get(code, (now, 0, 0))
        if now - start >= self._window:
            start, logged = now, 0
        if logged >= self._lines:
            self._windows[code] = (start, logged, dropped + 1)
            return False
        self._windows[code] = (start, logged + 1, 0)
        detail = refusal.detail if refusal is not None else (record.detail or "-")
        self._logger.warning(
            "session %s rejected: code=%s limit=%s usage=%s peer=%s state=%s detail=%s%s",
            record.session_id,
            code,
            refusal.limit if refusal is not None else "-",
            refusal.usage if refusal is not None else "-",
            peer_digest(record.peer_id),
            record.final_state,
            detail,
            f" ({dropped} earlier {code} rejections not logged)" if dropped else "",
        )
        return True
