"""Frames over a byte stream: the thin I/O layer between a stream and the sans-I/O codec.

Works with any :class:`ByteStream`: a py-libp2p stream wrapped by
:func:`taleus_bootstrap._libp2p.as_byte_stream` (which maps libp2p's exceptions to
:class:`StreamBroken`), or :func:`taleus_bootstrap.testing.memory_stream_pair` in tests. Only
:class:`StreamBroken` is taken for a broken stream; any other exception from a stream is a bug
and propagates. Reads never go past the frame in progress, so nothing is buffered between frames.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from pydantic import TypeAdapter

from ._codec import AnyFrame, FrameDecoder, encode_frame
from ._errors import RejectionCode, RemoteProtocolError
from ._frames import FRAME_ADAPTER
from ._lazy import LazyModule

if TYPE_CHECKING:
    import trio
else:  # imported on first use: the store's synchronous uses never need it
    trio = LazyModule("trio")

__all__ = ["REJECTION_LINGER", "ByteStream", "FrameChannel", "PeerGone", "StreamBroken"]

REJECTION_LINGER: Final = 1.0
"""Seconds a peer gets to read a final ``rejected`` frame before the stream is reset."""
MAX_DRAIN_BYTES: Final = 64 * 1024
"""What a side still reads and drops while it waits for the peer's end of stream."""

logger = logging.getLogger("taleus_bootstrap.channel")


class StreamBroken(Exception):
    """The stream failed: reset by the peer, its connection lost, or closed for writing.

    :class:`ByteStream` implementations raise this (and only this) for a stream that cannot
    be used any more; ``read`` may instead return ``b""``.
    """


class ByteStream(Protocol):
    """The stream interface sessions need (a subset of py-libp2p's ``INetStream``).

    A stream that can tell an orderly end of stream (the peer's half-close) from a reset or a
    lost connection, which some transports also report as ``b""``, may have an
    ``ended_in_order() -> bool`` method, asked after ``read`` returned ``b""``: only an orderly
    end confirms a session's outcome (protocol section 10)."""

    async def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes; ``b""`` at end of stream (or :class:`StreamBroken`)."""
        ...

    async def write(self, data: bytes) -> None:
        """Write all of ``data``; :class:`StreamBroken` if the stream cannot take it."""
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

    __slots__ = ("_decoder", "closed", "max_frame_bytes", "stream", "writable")

    def __init__(
        self,
        stream: ByteStream,
        *,
        max_frame_bytes: int,
        adapter: TypeAdapter[Any] = FRAME_ADAPTER,
    ) -> None:
        """``adapter``: another protocol's messages in the same framing (the resolve
        protocol's)."""
        self.stream = stream
        self.max_frame_bytes = max_frame_bytes
        self._decoder = FrameDecoder(max_frame_bytes, adapter=adapter)
        self.writable = True
        self.closed = False

    async def receive(self) -> AnyFrame:
        """The next frame. Raises :class:`RemoteProtocolError` (bad frame) or :class:`PeerGone`."""
        decoder = self._decoder
        while True:
            frame = decoder.next_frame()
            if frame is not None:
                return frame
            if decoder.at_eof:
                raise PeerGone("stream ended before the expected frame")
            try:
                data = await self.stream.read(decoder.bytes_needed)
            except StreamBroken as exc:
                logger.debug("read ended: %s", exc)
                data = b""
            # b"" marks the end of stream: the next round raises for a truncated frame,
            # or PeerGone if the stream ended between frames.
            decoder.feed(data)

    async def send(self, frame: AnyFrame) -> None:
        """Write one frame. Raises :class:`PeerGone` if the stream is broken."""
        await self.send_bytes(encode_frame(frame, max_frame_bytes=self.max_frame_bytes))

    async def send_bytes(self, payload: bytes) -> None:
        """Write one encoded frame. Raises :class:`PeerGone` if the stream is broken."""
        if not self.writable:
            raise PeerGone("stream is no longer writable")
        try:
            await self.stream.write(payload)
        except StreamBroken as exc:
            self.writable = False
            raise PeerGone(f"write failed: {exc or type(exc).__name__}") from None

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
        except StreamBroken as exc:
            logger.debug("close failed: %s", exc)

    async def send_last(self, payload: bytes) -> None:
        """Write ``payload`` as the last frame and half-close; a broken stream is ignored."""
        with contextlib.suppress(PeerGone):
            await self.send_bytes(payload)
        await self.close()

    async def fail(self, rejection: bytes | None, *, bound: float) -> None:
        """End the stream after a failure: ``rejection`` (an encoded ``rejected`` frame) as the
        last frame, or none (the peer rejected first, or is gone), then the end of stream.

        Each part is bounded by ``bound`` seconds; nothing raises but cancellation."""
        sent = False
        if rejection is not None and self.writable:
            with trio.move_on_after(bound):
                try:
                    await self.send_bytes(rejection)
                    sent = True
                except PeerGone:
                    pass
        self.writable = False
        with trio.move_on_after(bound):
            if sent:
                await self.end_after_rejection(REJECTION_LINGER)
            else:
                await self.reset()

    async def end_after_rejection(self, linger: float) -> None:
        """Close our side after a final ``rejected`` frame, then reset.

        A yamux reset right after a write can destroy the unread frame on the peer's side, so
        the stream is half-closed first and the peer given up to ``linger`` seconds to read it
        and end its side (what it still sends is drained and dropped, at most
        :data:`MAX_DRAIN_BYTES`); then the stream is reset so no entry stays behind.
        """
        if not self.closed:
            await self._half_close()
            await self.await_peer_end(linger)
        await self.reset()

    async def await_peer_end(self, bound: float) -> bool:
        """Wait up to ``bound`` seconds for the peer to end its side of the stream, dropping what
        it still sends (at most :data:`MAX_DRAIN_BYTES`). True if the end of stream arrived."""
        ending, _ = await self._drain(bound)
        return ending != "timeout"  # an end, or a reset: the peer is done with the stream

    async def await_orderly_end(self, bound: float) -> bool:
        """Wait up to ``bound`` seconds for the peer's *orderly* end of stream: True only if it
        ends its side with nothing more sent and no reset (what a peer does once its outcome
        is durable, protocol section 10). Whatever else comes is drained as by
        :meth:`await_peer_end`, and the answer is False."""
        ending, drained = await self._drain(bound)
        return ending == "end" and drained == 0

    async def _drain(self, bound: float) -> tuple[Literal["end", "broken", "timeout"], int]:
        """Read and drop until the end of stream, a reset or ``bound``; how it ended, and the
        bytes dropped."""
        drained = 0
        with trio.move_on_after(bound):
            while drained <= MAX_DRAIN_BYTES:
                try:
                    data = await self.stream.read(4096)
                except StreamBroken:
                    return "broken", drained
                if not data:
                    orderly = getattr(self.stream, "ended_in_order", None)
                    if orderly is not None and not orderly():
                        return "broken", drained  # a reset or a dead connection, seen as an end
                    return "end", drained
                drained += len(data)
        return "timeout", drained

    async def reset(self) -> None:
        """Abort the stream (after a timeout or an error); never raises but Cancelled."""
        self.writable = False
        if self.closed:
            return
        self.closed = True
        try:
            await self.stream.reset()
        except StreamBroken as exc:
            logger.debug("reset failed: %s", exc)
