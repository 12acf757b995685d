"""GCRA rate limiting with an injected clock and bounded memory (sans-I/O).

The generic cell rate algorithm keeps one number per key, the theoretical arrival time (TAT).
``now`` is always passed in, so tests drive it with ``trio.current_time()`` under an autojump
clock. :class:`KeyedRateLimiter` evicts the least recently seen key beyond ``max_keys``; a key whose
TAT is in the past is indistinguishable from a new one, so :meth:`prune` drops it for free.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Decision", "Gcra", "KeyedRateLimiter", "SingleRateLimiter"]


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether one event is allowed now, and if not, after how many seconds it would be."""

    allowed: bool
    retry_after_s: float


class Gcra:
    """GCRA parameters: ``rate`` events per ``period`` seconds, with ``burst`` at once."""

    def __init__(self, rate: float, period: float, burst: int) -> None:
        if rate <= 0 or period <= 0 or burst < 1:
            raise ValueError("rate, period and burst must be positive")
        self.emission_interval = period / rate
        self.tolerance = self.emission_interval * (burst - 1)

    def decide(self, tat: float | None, now: float) -> tuple[Decision, float | None]:
        """Decide for a key whose TAT is ``tat`` (``None``: unseen); returns the decision and the
        key's new TAT (``None`` when refused: the TAT does not move)."""
        tat = now if tat is None or tat < now else tat
        allow_at = tat - self.tolerance
        if now < allow_at:
            return Decision(False, allow_at - now), None
        return Decision(True, 0.0), tat + self.emission_interval


class KeyedRateLimiter:
    """One GCRA per key (a peer id), at most ``max_keys`` keys remembered."""

    def __init__(self, gcra: Gcra, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be positive")
        self._gcra = gcra
        self._max_keys = max_keys
        self._tats: OrderedDict[str, float] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._tats)

    def check(self, key: str, now: float) -> Decision:
        """Count one event for ``key`` at ``now`` if allowed."""
        decision, new_tat = self._gcra.decide(self._tats.get(key), now)
        if new_tat is not None:
            self._tats[key] = new_tat
        if key in self._tats:
            self._tats.move_to_end(key)
        while len(self._tats) > self._max_keys:
            self._tats.popitem(last=False)
            self.evictions += 1
        return decision

    def prune(self, now: float) -> int:
        """Forget every key whose TAT has passed (it would be treated as new anyway)."""
        stale = [key for key, tat in self._tats.items() if tat <= now]
        for key in stale:
            del self._tats[key]
        return len(stale)


class SingleRateLimiter:
    """One GCRA for the whole node (the global session-start rate)."""

    def __init__(self, gcra: Gcra) -> None:
        self._gcra = gcra
        self._tat: float | None = None

    def check(self, now: float) -> Decision:
        """Count one event at ``now`` if allowed."""
        decision, new_tat = self._gcra.decide(self._tat, now)
        if new_tat is not None:
            self._tat = new_tat
        return decision
