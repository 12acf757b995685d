"""The store's circuit breaker: when the store hooks keep failing, refuse new streams early.

Sans-I/O (times are passed in). The engine reports every call of a store hook (token, database,
audit): returned, or raised / cut by its deadline. When ``failures`` calls **of one hook** fail
in a row (the token store may be down while the audit log is not), the breaker **opens**:
admission answers new streams ``busy`` with ``retry_after_s`` = the time left open, instead of
letting sessions pile up on a stalled store until the cap does. After ``open_s`` it lets **one**
stream through as a probe (half-open): a call of the hook that opened it returning closes it,
any failure opens it again. A probe that settles nothing within ``open_s`` (its peer went away)
is replaced by the next stream.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Final

__all__ = ["BreakerState", "StoreBreaker"]

logger = logging.getLogger("taleus_bootstrap.manager")

_MIN_RETRY: Final = 0.1


class BreakerState(StrEnum):
    """Where the breaker stands: ``closed`` (serving), ``open`` (refusing), ``half_open``."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class StoreBreaker:
    """See the module docstring. ``record`` and ``admit`` take the current time in seconds."""

    def __init__(self, *, failures: int, open_s: float) -> None:
        self.failures = failures
        self.open_s = open_s
        self.state = BreakerState.CLOSED
        self.changes = 0
        """How often the state changed."""
        self._failed_in_a_row: dict[str, int] = {}
        self._culprit = ""  # the hook whose failures opened it
        self._since = 0.0  # when it opened, or when the probe was let through

    def record(self, hook: str, ok: bool, now: float) -> None:
        """A call of the store hook ``hook`` (``token``, ``database``, ``audit``) returned
        (``ok``) or failed."""
        if ok:
            self._failed_in_a_row[hook] = 0
            if self.state is BreakerState.HALF_OPEN and hook == self._culprit:
                self._change(BreakerState.CLOSED, now, f"a probe's {hook} call returned")
            return
        failed = self._failed_in_a_row[hook] = self._failed_in_a_row.get(hook, 0) + 1
        if self.state is BreakerState.HALF_OPEN:
            self._culprit = hook
            self._change(BreakerState.OPEN, now, f"a probe's {hook} call failed")
        elif self.state is BreakerState.CLOSED and failed >= self.failures:
            self._culprit = hook
            self._change(BreakerState.OPEN, now, f"{failed} {hook} hook calls failed in a row")

    def admit(self, now: float) -> float | None:
        """None to admit a stream; else the ``retry_after_s`` of its ``busy``."""
        if self.state is BreakerState.CLOSED:
            return None
        left = self._since + self.open_s - now
        if left > 0:
            return max(left, _MIN_RETRY)
        if self.state is BreakerState.OPEN:
            self._change(BreakerState.HALF_OPEN, now, "letting one stream through as a probe")
        else:  # the last probe made no store call in time: the next stream probes
            self._since = now
        return None

    def _change(self, state: BreakerState, now: float, why: str) -> None:
        self.state = state
        self._since = now
        self.changes += 1
        if state is BreakerState.OPEN:
            logger.warning(
                "store breaker open: %s; new streams get busy for %g s", why, self.open_s
            )
        else:
            logger.warning("store breaker %s: %s", state.value, why)
