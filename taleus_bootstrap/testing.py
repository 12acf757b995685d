"""Helpers for testing code that uses taleus-bootstrap without a network.

:func:`memory_stream_pair` gives two connected in-memory byte streams with the ``read`` /
``write`` / ``close`` / ``reset`` interface sessions use, so a :class:`~taleus_bootstrap.
SessionManager` can be driven with ``manager.handle_stream(stream, peer_id)`` under trio's
``MockClock``.

The hook conformance kit checks user-written hooks against the hook contracts, like trio's
``check_two_way_stream``: :func:`check_token_hook`, :func:`check_audit_hook`,
:func:`check_database_hook` and :func:`check_identity_hook`, driven through the harnesses
:class:`TokenHookHarness`, :class:`AuditHookHarness` and :class:`DatabaseHookHarness`, with a
:class:`ManualClock` for stores that take a clock.
"""

from __future__ import annotations

import trio
import trio.testing

from ._channel import FrameChannel, PeerGone, StreamBroken
from ._codec import DEFAULT_MAX_FRAME_BYTES, AnyFrame, encode_frame
from ._conformance import (
    AuditHookHarness,
    DatabaseHookHarness,
    ManualClock,
    TokenHookHarness,
    check_audit_hook,
    check_database_hook,
    check_identity_hook,
    check_token_hook,
)
from ._libp2p import as_byte_stream

__all__ = [
    "AuditHookHarness",
    "DatabaseHookHarness",
    "ManualClock",
    "MemoryByteStream",
    "TokenHookHarness",
    "check_audit_hook",
    "check_database_hook",
    "check_identity_hook",
    "check_token_hook",
    "memory_stream_pair",
    "read_frame",
    "write_frame",
]


class MemoryByteStream:
    """One end of an in-memory stream, with py-libp2p's stream method names."""

    def __init__(self, stream: trio.StapledStream) -> None:
        self._stream = stream
        self.was_reset = False
        self.was_closed = False
        self.peer: MemoryByteStream | None = None
        """The other end (set by :func:`memory_stream_pair`)."""

    async def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes; ``b""`` at end of stream or after a reset."""
        try:
            return await self._stream.receive_some(n)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return b""

    async def write(self, data: bytes) -> None:
        """Write ``data``; raises :class:`~taleus_bootstrap._channel.StreamBroken` if the
        peer reset (or this end was closed)."""
        try:
            await self._stream.send_all(data)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise StreamBroken(type(exc).__name__) from None

    async def close(self) -> None:
        """Half-close (send EOF)."""
        self.was_closed = True
        try:
            await self._stream.send_eof()
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise StreamBroken(type(exc).__name__) from None

    def ended_in_order(self) -> bool:
        """After :meth:`read` returned ``b""``: whether the other end half-closed (True) or
        reset (False)."""
        return self.peer is None or not self.peer.was_reset

    async def reset(self) -> None:
        """Close both directions."""
        self.was_reset = True
        await self._stream.aclose()


def memory_stream_pair() -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected :class:`MemoryByteStream` ends."""
    left, right = trio.testing.memory_stream_pair()
    ours, theirs = MemoryByteStream(left), MemoryByteStream(right)
    ours.peer, theirs.peer = theirs, ours
    return ours, theirs


async def write_frame(stream: object, frame: AnyFrame) -> None:
    """Write one frame to ``stream`` (a :class:`MemoryByteStream` or a py-libp2p stream)."""
    await as_byte_stream(stream).write(encode_frame(frame))


async def read_frame(
    stream: object, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> AnyFrame | None:
    """Read one frame from ``stream`` (a :class:`MemoryByteStream` or a py-libp2p stream), or
    None at end of stream (a truncated or bad frame raises
    :class:`~taleus_bootstrap.RemoteProtocolError`)."""
    channel = FrameChannel(as_byte_stream(stream), max_frame_bytes=max_frame_bytes)
    try:
        return await channel.receive()
    except PeerGone:
        return None
