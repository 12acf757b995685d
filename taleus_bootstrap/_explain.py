"""Explaining rejections: one WARNING line per rejected session or refused stream,
rate-limited per code.

A line names the session (or says the stream was refused at admission), the code, the limit
involved and its current usage (for ``busy`` and ``rate_limited``), the peer id's digest (never
the peer id) and the detail. Each code may log :data:`LINES_PER_WINDOW` lines per
:data:`WINDOW_S` seconds; what is dropped beyond that is counted and reported by the next line
of that code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ._telemetry import peer_digest

if TYPE_CHECKING:
    from ._admission import Refusal
    from ._session import SessionRecord

__all__ = ["LINES_PER_WINDOW", "WINDOW_S", "RejectionExplainer"]

LINES_PER_WINDOW: Final = 10
WINDOW_S: Final = 10.0


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

    def _log(self, code: str, message: str, *args: object) -> bool:
        """Log ``message`` at WARNING unless ``code`` is over its budget (then count it)."""
        now = self._clock()
        start, logged, dropped = self._windows.get(code, (now, 0, 0))
        if now - start >= self._window:
            start, logged = now, 0
        if logged >= self._lines:
            self._windows[code] = (start, logged, dropped + 1)
            return False
        self._windows[code] = (start, logged + 1, 0)
        suffix = f" ({dropped} earlier {code} rejections not logged)" if dropped else ""
        self._logger.warning(message + "%s", *args, suffix)
        return True

    def explain(self, record: SessionRecord) -> bool:
        """Log why the session of ``record`` was rejected, unless its code is over its budget;
        True if logged."""
        assert record.code is not None
        return self._log(
            record.code.value,
            "session %s rejected: code=%s limit=- usage=- peer=%s state=%s detail=%s",
            record.session_id,
            record.code.value,
            peer_digest(record.peer_id),
            record.final_state,
            record.detail or "-",
        )

    def explain_refusal(self, peer_id: str, refusal: Refusal) -> bool:
        """Log why a stream from ``peer_id`` was rejected at admission (no session exists),
        unless its code is over its budget; True if logged."""
        return self._log(
            refusal.code.value,
            "stream rejected at admission: code=%s limit=%s usage=%s peer=%s detail=%s",
            refusal.code.value,
            refusal.limit,
            refusal.usage,
            peer_digest(peer_id),
            refusal.detail,
        )
