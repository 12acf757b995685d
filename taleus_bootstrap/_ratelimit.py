"""GCRA rate limiting with an injected clock and bounded memory that volume cannot reset
(sans-I/O).

The generic cell rate algorithm keeps one number per key, the theoretical arrival time (TAT).
``now`` is always passed in, so tests drive it with ``trio.current_time()`` under an autojump
clock. A key whose TAT has passed is *fully recovered*: indistinguishable from a key never seen.

:class:`KeyedRateLimiter` holds at most ``max_keys`` keys, and forgets only fully recovered ones:
a flood of fresh keys can never push out a key that is being limited (which would give it a
fresh burst). When every key held is still limited, a new key is refused, with the time until
the first one recovers as its retry hint. A heap ordered by TAT finds the next key to forget in
O(log n).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

__all__ = ["Decision", "Gcra", "KeyedRateLimiter", "SingleRateLimiter"]


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether one event is allowed now, and if not, after how many seconds it would be.

    ``full``: refused only because the limiter holds ``max_keys`` keys, all still limited.
    """

    allowed: bool
    retry_after_s: float
    full: bool = False


_ALLOWED = Decision(True, 0.0)


class Gcra:
    """GCRA parameters: ``rate`` events per ``period`` seconds, with ``burst`` at once."""

    __slots__ = ("emission_interval", "tolerance")

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
        return _ALLOWED, tat + self.emission_interval


class KeyedRateLimiter:
    """One GCRA per key (a peer id), at most ``max_keys`` keys, forgotten only once recovered."""

    def __init__(self, gcra: Gcra, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be positive")
        self._gcra = gcra
        self._max_keys = max_keys
        self._tats: dict[str, float] = {}
        # (TAT, key) of every update; an entry whose TAT is no longer the key's is stale.
        self._heap: list[tuple[float, str]] = []
        self.evictions = 0
        self.refused_full = 0

    def __len__(self) -> int:
        return len(self._tats)

    def check(self, key: str, now: float) -> Decision:
        """Count one event for ``key`` at ``now`` if allowed."""
        tat = self._tats.get(key)
        if tat is None and len(self._tats) >= self._max_keys:
            if not self._forget_one(now):
                self.refused_full += 1
                return Decision(False, max(0.0, self._heap[0][0] - now), full=True)
            self.evictions += 1
        decision, new_tat = self._gcra.decide(tat, now)
        if new_tat is not None:
            self._tats[key] = new_tat
            heapq.heappush(self._heap, (new_tat, key))
            if len(self._heap) > 2 * len(self._tats) + 64:
                self._compact()
        return decision

    def prune(self, now: float) -> int:
        """Forget every key that has fully recovered (its TAT has passed)."""
        pruned = 0
        while self._forget_one(now):
            pruned += 1
        return pruned

    def _forget_one(self, now: float) -> bool:
        """Forget the key with the earliest TAT if it has passed; False if none has."""
        heap, tats = self._heap, self._tats
        while heap:
            tat, key = heap[0]
            if tats.get(key) != tat:
                heapq.heappop(heap)  # stale: the key moved on, or was forgotten
                continue
            if tat > now:
                return False
            heapq.heappop(heap)
            del tats[key]
            return True
        return False

    def _compact(self) -> None:
        self._heap = [(tat, key) for key, tat in self._tats.items()]
        heapq.heapify(self._heap)


class SingleRateLimiter:
    """One GCRA for the whole node (the global session-start rate)."""

    __slots__ = ("_gcra", "_tat")

    def __init__(self, gcra: Gcra) -> None:
        self._gcra = gcra
        self._tat: float | None = None

    def check(self, now: float) -> Decision:
        """Count one event at ``now`` if allowed."""
        decision, new_tat = self._gcra.decide(self._tat, now)
        if new_tat is not None:
            self._tat = new_tat
        return decision
