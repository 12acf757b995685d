"""Admission: what is decided for an inbound stream before anything is read or built.

PROTOCOL.md section 7.3 step 1: ``shutting_down``, ``busy`` and ``rate_limited`` are decided
here, from the authenticated peer id and counters alone, in O(1) (O(log n) when the per-peer
limiter must forget a recovered peer). A refused stream never becomes a session: it gets one
``rejected`` frame and the end of the stream (:func:`refuse`), no audit event of its own; the
refusals of a window are audited together (:class:`RefusalWindow`, one
:class:`~taleus_bootstrap.AdmissionSummary` event).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import trio

from ._breaker import StoreBreaker
from ._channel import ByteStream, FrameChannel
from ._codec import encode_frame
from ._config import ManagerConfig
from ._errors import RejectionCode
from ._events import MAX_SUMMARY_PEERS, AdmissionSummary
from ._frames import Rejected
from ._ratelimit import Decision, Gcra, KeyedRateLimiter, SingleRateLimiter
from ._telemetry import peer_digest

__all__ = ["Admission", "Refusal", "RefusalWindow", "refuse"]

MAX_WINDOW_PEERS: Final = 4096
"""Distinct peers a refusal window counts one by one; beyond, only the totals."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a stream is refused before it is read, and the limit it hit."""

    code: RejectionCode
    retry_after_s: float | None
    detail: str
    limit: str = "-"
    usage: str = "-"

    def frame(self) -> bytes:
        """The ``rejected`` frame that answers the stream."""
        return encode_frame(Rejected(code=self.code, retry_after_s=self.retry_after_s))


_NOT_ACCEPTING: Final = Refusal(
    RejectionCode.SHUTTING_DOWN, None, "manager is not accepting (draining, or not started)"
)


def _rate_limited(decision: Decision, detail: str, limit: str, usage: str = "") -> Refusal:
    retry = decision.retry_after_s
    usage = usage or f"burst spent, next start in {retry:.3g} s"
    return Refusal(RejectionCode.RATE_LIMITED, round(retry, 3), detail, limit, usage)


class Admission:
    """The concurrency cap and the per-peer and global session-start rates of one manager."""

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self.breaker = (
            StoreBreaker(failures=config.breaker_failures, open_s=config.breaker_open_s)
            if config.breaker_failures
            else None
        )
        self.peers = KeyedRateLimiter(
            Gcra(config.peer_rate, config.peer_rate_period, config.peer_burst),
            config.max_tracked_peers,
        )
        self._global = SingleRateLimiter(Gcra(config.global_rate_per_s, 1.0, config.global_burst))
        self._busy_retry = config.busy_retry_after_s
        self._busy_frame = Refusal(RejectionCode.BUSY, config.busy_retry_after_s, "").frame()

    def decide(self, peer_id: str, *, running: int | None, now: float) -> Refusal | None:
        """None to admit a stream from ``peer_id``; else why not. ``running``: the sessions
        running now, or None when the manager is not accepting (draining or not started)."""
        cfg = self.config
        if running is None:
            return _NOT_ACCEPTING
        if running >= cfg.max_concurrent_sessions:
            return Refusal(
                RejectionCode.BUSY,
                cfg.busy_retry_after_s,
                f"{running} sessions running, cap {cfg.max_concurrent_sessions}",
                limit=f"max_concurrent_sessions={cfg.max_concurrent_sessions}",
                usage=f"{running} running",
            )
        if self.breaker is not None and (retry := self.breaker.admit(now)) is not None:
            return Refusal(
                RejectionCode.BUSY,
                round(retry, 3),
                f"store breaker {self.breaker.state.value}: the store hooks keep failing",
                limit=f"breaker_failures={cfg.breaker_failures}",
                usage=f"open for {cfg.breaker_open_s:g} s",
            )
        decision = self.peers.check(peer_id, now)
        if not decision.allowed:
            if decision.full:
                return _rate_limited(
                    decision,
                    "rate limiter full: every tracked peer is still limited",
                    f"max_tracked_peers={cfg.max_tracked_peers}",
                    f"{len(self.peers)} tracked, none recovered",
                )
            return _rate_limited(
                decision,
                f"peer over {cfg.peer_rate} starts per {cfg.peer_rate_period:g} s",
                f"peer_rate={cfg.peer_rate}/{cfg.peer_rate_period:g}s burst={cfg.peer_burst}",
            )
        decision = self._global.check(now)
        if not decision.allowed:
            return _rate_limited(
                decision,
                f"node over {cfg.global_rate_per_s:g} starts per second",
                f"global_rate_per_s={cfg.global_rate_per_s:g} burst={cfg.global_burst}",
            )
        return None

    def frame(self, refusal: Refusal) -> bytes:
        """The encoded ``rejected`` frame for ``refusal`` (``busy``'s is encoded once)."""
        if refusal.code is RejectionCode.BUSY and refusal.retry_after_s == self._busy_retry:
            return self._busy_frame
        return refusal.frame()


async def refuse(
    stream: ByteStream, frame: bytes, *, linger: bool, bound: float, max_frame_bytes: int
) -> None:
    """Answer a refused stream: ``frame`` (an encoded ``rejected``), then the end of the
    stream. With ``linger``, the peer gets up to ``REJECTION_LINGER`` to read it and end its
    side, then the stream is reset (section 10); without, the stream is half-closed and left to
    the peer to end. Nothing is read but what is drained; nothing raises but cancellation."""
    channel = FrameChannel(stream, max_frame_bytes=max_frame_bytes)
    if linger:
        await channel.fail(frame, bound=bound)
        return
    with trio.move_on_after(bound):
        await channel.send_last(frame)


class RefusalWindow:
    """Counts the refusals of one window: by code, and by peer (up to a bound)."""

    def __init__(self, now: float, wall: datetime) -> None:
        self._start, self._start_wall = now, wall
        self.codes: Counter[RejectionCode] = Counter()
        self._peers: Counter[str] = Counter()
        self._capped = False

    def add(self, code: RejectionCode, peer_id: str) -> None:
        """Count one refusal."""
        self.codes[code] += 1
        peers = self._peers
        if peer_id in peers or len(peers) < MAX_WINDOW_PEERS:
            peers[peer_id] += 1
        else:
            self._capped = True

    def __bool__(self) -> bool:
        return bool(self.codes)

    def summary(self, now: float, wall: datetime) -> AdmissionSummary:
        """The audit event of this window (which ends at ``now``)."""
        top = [(peer_digest(p), n) for p, n in self._peers.most_common(MAX_SUMMARY_PEERS)]
        return AdmissionSummary(
            at=wall,
            side="inviter",
            window_start=self._start_wall,
            window_s=max(0.0, now - self._start),
            refused=dict(self.codes),
            top_peers=top,
            peers=len(self._peers),
            peers_capped=self._capped,
        )
