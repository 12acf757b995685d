"""The transport's cost per bootstrap (issue 17): reads, yamux crediting and frames.

Part of :mod:`taleus_bootstrap._libp2p` (the one place for py-libp2p workarounds): buffered
TCP reads under Noise (:class:`_ReadBuffered`), go-yamux window crediting
(:class:`_BatchedWindowStream`), a stream's SYN on its first DATA frame
(:class:`_SynWithDataStream`), bytes received before a connection closed kept for their
reader (:class:`_DrainedStream`), the yamux frame write without per-frame debug formatting, and
the muxer negotiation that builds our yamux (:class:`_BootstrapMuxerMultistream`). Each is
measured in docs/perf/ and has a regression test in tests/test_transport_frames.py; each can be
left out with :data:`TRANSPORT_OFF_ENV` for before/after measurements.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import Final

import trio
from libp2p.abc import IMuxedConn, IRawConnection, ISecureConn
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.trio import TrioTCPStream
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamError, MuxedStreamReset
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import (
    FLAG_SYN,
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    TYPE_DATA,
    TYPE_WINDOW_UPDATE,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID

TRANSPORT_OFF_ENV: Final = "TALEUS_TRANSPORT_OFF"
"""Comma-separated transport changes of issue 17 to leave out of the hosts built here, for
before/after measurements only (tests/bench_transport.py, ``loadtest``): ``window`` (yamux
as py-libp2p has it, without :class:`_BatchedWindowStream`; turns ``syn`` off
too), ``reads`` (no :class:`_ReadBuffered`), ``select`` (multistream-select as py-libp2p has
it, without :class:`_OneWriteMultiselectClient` and :class:`_CoalescingMultiselect`), ``syn``
(a stream's SYN in a frame of its own, not on its first DATA frame:
:class:`_SynWithDataStream`), ``eof`` (a closed TCP stream read again, as py-libp2p does, in
:class:`_ReadBuffered`), ``quiet`` (py-libp2p's yamux ``_write_frame``, not
:meth:`_BootstrapYamux._write_frame`)."""


def _transport_off(change: str) -> bool:
    return change in os.environ.get(TRANSPORT_OFF_ENV, "").split(",")


class _ReadBuffered:
    """A TCP connection's reads through a buffer (issue 17).

    Noise reads each message in two reads, its 2-byte length and then its body, and py-libp2p
    hands each to the socket: two ``recv`` system calls (and trio's wait machinery) per
    message, when one ``recv`` of up to 64 KiB usually holds the whole message, often several.
    Reads are served from what the last ``recv`` brought; writes and the rest pass through.
    """

    __slots__ = ("_buffer", "_ended", "inner")

    RECV_SIZE: Final = 65536

    def __init__(self, inner: ReadWriteCloser) -> None:
        self.inner = inner
        self._buffer = b""
        self._ended = False

    async def read(self, n: int | None = None) -> bytes:
        buffer = self._buffer
        if not buffer:
            if self._ended or n == 0:
                return b""
            buffer = await self.inner.read(None if n is None else max(n, self.RECV_SIZE))
            if not buffer:
                # End of stream (or closed here): final for TCP. py-libp2p's read_exactly
                # asks 100 more times before it gives up: each would be a trio checkpoint,
                # a receive_some raising ClosedResourceError and a debug record.
                self._ended = not _transport_off("eof")
                return buffer
            if n is None or len(buffer) <= n:
                return buffer
        if n is None or n >= len(buffer):
            self._buffer = b""
            return buffer
        self._buffer = buffer[n:]
        return buffer[:n]

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def close(self) -> None:
        await self.inner.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.inner.get_remote_address()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _buffer_reads(raw_conn: IRawConnection) -> None:
    stream = getattr(raw_conn, "stream", None)
    if isinstance(stream, TrioTCPStream) and not _transport_off("reads"):
        raw_conn.stream = _ReadBuffered(stream)  # type: ignore[attr-defined]


class _DrainedStream(YamuxStream):
    """A yamux stream that hands out what arrived before its connection closed (issue 17).

    When a connection ends, cleanly or not, py-libp2p 0.8.1's ``Yamux._cleanup_on_error``
    clears every stream's receive buffer and marks the stream reset: a peer that writes its
    last frame, half-closes the stream and closes the connection at once (js-libp2p's
    ``stream.close()`` then ``node.stop()``) loses that frame if the reader had not taken it
    yet; the reader sees EOF. :class:`_BootstrapYamux` keeps those bytes here, and reads serve
    them before reporting the end of the stream, as TCP and go-yamux do.
    """

    _leftover: bytearray | None = None

    async def read(self, n: int | None = -1) -> bytes:
        if not self._leftover:
            try:
                return await super().read(n)
            except (MuxedStreamEOF, MuxedStreamReset):
                if not self._leftover:
                    raise
        leftover = self._leftover
        take = len(leftover) if n is None or n < 0 else min(n, len(leftover))
        data = bytes(leftover[:take])
        del leftover[:take]
        return data


class _BatchedWindowStream(_DrainedStream):
    """A yamux stream that credits its receive window the way go-yamux does (issue 17).

    py-libp2p 0.8.1 sends a WINDOW_UPDATE after nearly every read, however small: a read of a
    1-byte length prefix and one of a 200-byte frame body each cost a frame on the wire (and
    its ``PY_YAMUX_RELEASE_ON_READ=0`` knob does not stop it: its "partial slack" branch still
    fires on every read, crediting twice the bytes read). go-yamux
    (``stream.sendWindowUpdate``) sends one only when the credit owed,
    ``max window - buffered - receive window``, is at least half the max window. Same here:
    the peer may have at most the full window (256 KiB) in flight, and is credited again as
    soon as half of it has been read; a bootstrap's few hundred bytes need no update at all.
    The autotuning (doubling the target window when updates come fast) is kept as py-libp2p
    does it, applied only when an update is sent.
    """

    async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
        async with self.window_lock:
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            delta = self.target_recv_window - (self.recv_window + buffered)
            if delta <= 0 or delta < self.target_recv_window // 2:
                return
            self.recv_window += delta
            delta += self._apply_autotune_epoch(buffered)
        await self.send_window_update(delta, skip_lock=True)


_YAMUX_LOGGER: Final = logging.getLogger("libp2p.stream_muxer.yamux.yamux")


class _SynWithDataStream(_BatchedWindowStream):
    """An outbound yamux stream whose SYN flag rides on its first DATA frame (issue 17).

    py-libp2p 0.8.1 opens a stream with a WINDOW_UPDATE frame of its own carrying SYN, and the
    dialer's first write (multistream-select) follows as a second frame. yamux lets the flag
    ride on a DATA frame (go-yamux and js-libp2p's yamux send it with the first frame they
    have; every implementation, py-libp2p's included, accepts a DATA+SYN). The SYN goes out
    with the first write that fits in one frame, or alone before anything else: a read (the
    peer cannot answer a stream it does not know), a close, a reset, a larger first write.
    """

    syn_pending = False

    async def _send_syn(self, data: bytes = b"") -> bool:
        """Send the SYN (with ``data`` when it fits in one frame); whether ``data`` went."""
        self.syn_pending = False  # before any await: no other frame of this stream goes first
        fits = 0 < len(data) <= min(self.send_window, MAX_MESSAGE_SIZE - HEADER_SIZE)
        if fits:
            self.send_window -= len(data)
        header = struct.pack(
            YAMUX_HEADER_FORMAT,
            0,
            TYPE_DATA if fits else TYPE_WINDOW_UPDATE,
            FLAG_SYN,
            self.stream_id,
            len(data) if fits else 0,
        )
        await self.conn._write_frame(header + data if fits else header)
        return fits

    async def write(self, data: bytes) -> None:
        if self.syn_pending and not self.send_closed and await self._send_syn(data):
            return
        await super().write(data)

    async def read(self, n: int | None = -1) -> bytes:
        if self.syn_pending:
            await self._send_syn()
        return await super().read(n)

    async def close(self) -> None:
        if self.syn_pending:
            await self._send_syn()
        await super().close()

    async def reset(self) -> None:
        if self.syn_pending:
            await self._send_syn()
        await super().reset()


class _BootstrapYamux(Yamux):
    """py-libp2p's yamux with ``stream_class`` streams (:class:`_BatchedWindowStream`, or
    :class:`_DrainedStream` with ``TALEUS_TRANSPORT_OFF=window``) whose received bytes survive
    the connection's end; outbound ones :class:`_SynWithDataStream` when ``syn_with_data``.
    :class:`_BootstrapMuxerMultistream` reads the switches once per connection.

    py-libp2p builds its streams from the module's ``YamuxStream`` in ``open_stream`` and in
    ``handle_incoming``; the class of each is switched before anyone can read from it
    (outbound: on return from ``open_stream``; inbound: in ``accept_stream``, and nothing
    reads an inbound stream before it is accepted).
    """

    stream_class: type[YamuxStream] = _BatchedWindowStream
    syn_with_data = True  # (its stream class extends _BatchedWindowStream: off with ``window``)
    quiet_writes = True

    async def _write_frame(self, data: bytes) -> None:
        """py-libp2p's, without what it does for a debug record on every frame when DEBUG is
        off (unpack the header, name its flags, format an f-string: ~2 µs a frame) and
        without its extra checkpoint after the write (the socket's ``send_all`` has one)."""
        if not self.quiet_writes or _YAMUX_LOGGER.isEnabledFor(logging.DEBUG):
            await super()._write_frame(data)
            return
        async with self._write_lock:
            await self.secured_conn.write(data)

    async def open_stream(self) -> YamuxStream:
        if not self.syn_with_data:
            stream = await super().open_stream()
            stream.__class__ = self.stream_class
            return stream
        # Yamux.open_stream without its SYN frame.
        await self.stream_backlog_semaphore.acquire()
        async with self.streams_lock:
            if self.event_shutting_down.is_set():
                self.stream_backlog_semaphore.release()
                raise MuxedStreamError("Connection is shutting down")
            stream_id = self.next_stream_id
            self.next_stream_id += 2
            stream = _SynWithDataStream(stream_id, self, True)
            stream.syn_pending = True
            stream._owns_backlog_slot = True
            self.streams[stream_id] = stream
            self.stream_buffers[stream_id] = bytearray()
            self.stream_events[stream_id] = trio.Event()
        return stream

    async def accept_stream(self) -> YamuxStream:
        stream = await super().accept_stream()
        if type(stream) is YamuxStream:
            stream.__class__ = self.stream_class
        return stream  # type: ignore[return-value]

    async def _cleanup_on_error(self) -> None:
        for stream_id, stream in self.streams.items():
            buffer = self.stream_buffers.get(stream_id)
            if buffer:  # (a stream not accepted yet is still a plain YamuxStream)
                if type(stream) is YamuxStream:
                    stream.__class__ = self.stream_class
                stream._leftover = bytearray(buffer)  # type: ignore[attr-defined]
        await super()._cleanup_on_error()


class _BootstrapMuxerMultistream(MuxerMultistream):
    """Muxer negotiation that builds :class:`_BootstrapYamux`: py-libp2p 0.8.1's
    ``MuxerMultistream.new_conn`` builds ``Yamux`` itself whenever yamux is negotiated, whatever
    class was registered for it."""

    async def new_conn(self, conn: ISecureConn, peer_id: ID) -> IMuxedConn:
        protocol, transport_class = await self._selector.select(
            conn, conn.is_initiator, self.negotiate_timeout
        )
        if protocol == YAMUX_PROTOCOL_ID:
            yamux = _BootstrapYamux(conn, peer_id, is_initiator=conn.is_initiator)
            window = not _transport_off("window")
            yamux.stream_class = _BatchedWindowStream if window else _DrainedStream
            yamux.syn_with_data = window and not _transport_off("syn")
            yamux.quiet_writes = not _transport_off("quiet")
            muxed: IMuxedConn = yamux
        else:
            muxed = transport_class(conn, peer_id)
        return self._annotate_connection(muxed, conn, protocol)
