"""Frames over a byte stream: the thin I/O layer between a libp2p stream and the sans-I/O codec.

Works with any object that has ``read(n)``, ``write(data)``, ``close()`` and ``reset()`` (a
py-libp2p ``INetStream``, or :func:`taleus_bootstrap.testing.memory_stream_pair` in tests).
Reads never go past the frame in progress, so nothing is buffered between frames.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

import trio

from ._codec import AnyFrame, FrameDecoder, encode_frame
from ._errors import RejectionCode, RemoteProtocolError
from ._frames import Rejected

__all__ = ["REJECTION_LINGER", "ByteStream", "FrameChannel", "PeerGone"]

REJECTION_LINGER: Final = 1.0
"""Seconds a peer gets to read a final ``rejected`` frame before the stream is reset."""

logger = logging.getLogger("taleus_bootstrap.channel")


class ByteStream(Protocol):
    """The stream interface sessions need (a subset of py-libp2p's ``INetStream``)."""

    async def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes; ``b""`` or an exception at end of stream."""
        ...

    async def write(self, data: bytes) -> None:
        """Write all of ``data``."""
        ...

    async def close(self) -> None:
        """Half-close: no more writes from this side."""
        ...

    async def reset(self) -> None:
        """Abort the stream in both directions."""
        ...


class PeerGone(RemoteProtocolError):
    """The stream ended or broke before the protocol was done (EOF, reset, write failure)."""

    def __init__(self, detail: str) -> None:
        super().__init__(RejectionCode.MALFORMED, detail)


class FrameChannel:
    """Reads and writes whole frames; remembers whether writing is still possible."""

    def __init__(self, stream: ByteStream, *, max_frame_bytes: int) -> None:
        self.stream = stream
        self.max_frame_bytes = max_frame_bytes
        self._decoder = FrameDecoder(max_frame_bytes)
        self.writable = True
        self.closed = False

    async def receive(self) -> AnyFrame:
        """The next frame. Raises :class:`RemoteProtocolError` (bad frame) or :class:`PeerGone`."""
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return frame
            if self._decoder.at_eof:
                raise PeerGone("stream ended before the expected frame")
            try:
                data = await self.stream.read(self._decoder.bytes_needed)
            except Exception as exc:  # libp2p: StreamEOF, StreamReset, StreamClosed...
                logger.debug("read ended: %s", type(exc).__name__)
                data = b""
            # b"" marks the end of stream: the next round raises for a truncated frame,
            # or PeerGone if the stream ended between frames.
            self._decoder.feed(data)

    async def send(self, frame: AnyFrame) -> None:
        """Write one frame. Raises :class:`PeerGone` if the stream is broken."""
        payload = encode_frame(frame, max_frame_bytes=self.max_frame_bytes)
        if not self.writable:
            raise PeerGone("stream is no longer writable")
        try:
            await self.stream.write(payload)
        except Exception as exc:
            self.writable = False
            raise PeerGone(f"write failed: {type(exc).__name__}") from None

    async def send_rejection(self, code: RejectionCode, retry_after_s: float | None = None) -> bool:
        """Best effort: write ``rejected`` as the last frame; True if it was written."""
        if not self.writable:
            return False
        try:
            await self.send(Rejected(code=code, retry_after_s=retry_after_s))
        except PeerGone:
            return False
        self.writable = False
        return True

    async def close(self) -> None:
        """Half-close after the last frame (the peer can still read what was written)."""
        self.writable = False
        if self.closed:
            return
        self.closed = True
        await self._half_close()

    async def _half_close(self) -> None:
        try:
            await self.stream.close()
        except Exception as exc:
            logger.debug("close failed: %s", type(exc).__name__)

    async def fail(
        self, code: RejectionCode | None, retry_after_s: float | None = None, *, bound: float
    ) -> None:
        """End the stream after a failure: ``rejected`` with ``code`` as the last frame (none
        when ``code`` is None: the peer rejected first, or is gone), then the end of stream.
        Each part is bounded by ``bound`` seconds; nothing raises but cancellation."""
        sent = False
        if code is not None:
            with trio.move_on_after(bound):
                sent = await self.send_rejection(code, retry_after_s)
        with trio.move_on_after(bound):
            if sent:
                await self.end_after_rejection(REJECTION_LINGER)
            else:
                await self.reset()

    async def end_after_rejection(self, linger: float, max_drain_bytes: int = 64 * 1024) -> None:
        """Close our side after a final ``rejected`` frame, then reset.

        A yamux reset right after a write can destroy the unread frame on the peer's side, so
        the stream is half-closed first and the peer given up to ``linger`` seconds to read it
        and end its side (what it still sends is drained and dropped, at most
        ``max_drain_bytes``); then the stream is reset so no entry stays behind.
        """
        if not self.closed:
            await self._half_close()
            await self.await_peer_end(linger, max_drain_bytes)
        await self.reset()

    async def await_peer_end(self, bound: float, max_drain_bytes: int = 64 * 1024) -> bool:
        """Wait up to ``bound`` seconds for the peer to end its side of the stream, dropping what
        it still sends (at most ``max_drain_bytes``). True if the end of stream arrived."""
        with trio.move_on_after(bound):
            drained = 0
            while drained <= max_drain_bytes:
                try:
                    data = await self.stream.read(4096)
                except Exception:
                    return True  # reset or closed: the peer is done with the stream
                if not data:
                    return True
                drained += len(data)
        return False

    async def reset(self) -> None:
        """Abort the stream (after a timeout or an error); never raises but Cancelled."""
        self.writable = False
        if self.closed:
            return
        self.closed = True
        try:
            await self.stream.reset()
        except Exception as exc:
            logger.debug("reset failed: %s", type(exc).__name__)
