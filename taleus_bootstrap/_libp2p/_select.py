"""Multistream-select in one write each way (issue 17).

Part of :mod:`taleus_bootstrap._libp2p`: the dialer proposes ``/multistream/1.0.0`` and its one
protocol together (:class:`_OneWriteMultiselectClient`), the listener answers header and echo
together when the proposal came with the header (:class:`_CoalescingMultiselect`), on the
host's streams and on the connection upgrades (:func:`_select_in_one_round_trip`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import trio
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.host.basic_host import BasicHost
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.exceptions import IOException
from libp2p.protocol_muxer.exceptions import (
    MultiselectClientError,
    MultiselectCommunicatorError,
    MultiselectError,
)
from libp2p.protocol_muxer.multiselect import MULTISELECT_PROTOCOL_ID, Multiselect
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.security.secure_session import SecureSession
from libp2p.transport.upgrader import TransportUpgrader
from libp2p.utils import encode_delim

from ._yamux import _ReadBuffered, _transport_off

_MULTISELECT_HEADER: Final = encode_delim(MULTISELECT_PROTOCOL_ID.encode())
_NOT_FOUND: Final = "na"
_WRITE_ERRORS = (IOException, AssertionError, ValueError)  # as MultiselectCommunicator.write


def _has_unread_bytes(read_writer: object) -> bool:
    """Whether ``read_writer`` already holds received bytes not read yet (never waits): a yamux
    stream's buffer, a Noise session's decrypted message, a :class:`_ReadBuffered` TCP stream's
    buffer. False when it cannot tell."""
    muxed = getattr(read_writer, "muxed_stream", None)
    if muxed is not None:
        buffers = getattr(getattr(muxed, "conn", None), "stream_buffers", None)
        return isinstance(buffers, dict) and bool(buffers.get(getattr(muxed, "stream_id", None)))
    if isinstance(read_writer, SecureSession):
        return read_writer.high_watermark > read_writer.low_watermark
    stream = getattr(read_writer, "stream", None)
    return isinstance(stream, _ReadBuffered) and bool(stream._buffer)


async def _read_prefix(reader: Any, expected: bytes) -> bytes:
    """Read from ``reader`` while what came is a proper prefix of ``expected`` (never more
    than ``expected`` is long); what was read."""
    got = b""
    while len(got) < len(expected) and expected.startswith(got):
        chunk = await reader.read(len(expected) - len(got))
        if not chunk:
            break
        got += chunk
    return got


class _Prefixed(ReadWriteCloser):
    """``reader`` with ``prefix`` (already read from it) in front."""

    def __init__(self, prefix: bytes, reader: Any) -> None:
        self.prefix, self.reader = prefix, reader

    async def read(self, n: int | None = None) -> bytes:
        if not self.prefix:
            data: bytes = await self.reader.read(n)
            return data
        cut = len(self.prefix) if n is None or n < 0 else n
        data, self.prefix = self.prefix[:cut], self.prefix[cut:]
        return data

    async def write(self, data: bytes) -> None:
        await self.reader.write(data)

    async def close(self) -> None:
        await self.reader.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        address: tuple[str, int] | None = self.reader.get_remote_address()
        return address


class _OneWriteMultiselectClient(MultiselectClient):
    """The dialer's multistream-select in one write and one round trip (issue 17).

    py-libp2p 0.8.1 writes ``/multistream/1.0.0``, waits for its echo, then writes the protocol
    id and waits again: two writes (two yamux frames on a stream) and two round trips before
    the first byte of the protocol. With a single protocol to propose, go-libp2p and js-libp2p
    send both lines in one write and read both answers after; so does this. With several
    protocols it is py-libp2p's negotiation, unchanged.
    """

    async def select_one_of(
        self,
        protocols: Sequence[TProtocol],
        communicator: Any,
        negotiate_timeout: int = 30,
    ) -> TProtocol:
        if len(protocols) != 1 or not isinstance(communicator, MultiselectCommunicator):
            return await super().select_one_of(protocols, communicator, negotiate_timeout)
        protocol = protocols[0]
        # What we send, and what a listener that selects it answers.
        expected = _MULTISELECT_HEADER + encode_delim(str(protocol).encode())
        with trio.move_on_after(negotiate_timeout):
            try:
                await communicator.read_writer.write(expected)
            except _WRITE_ERRORS as error:
                raise MultiselectClientError(f"handshake write failed: {error}") from error
            try:
                # Both answers in as few reads as they arrived in (one, from a listener that
                # answers in one write): a reset right after them must not find them unread.
                answers = await _read_prefix(communicator.read_writer, expected)
            except (IOException, BaseLibp2pError) as error:
                raise MultiselectClientError(f"protocol read failed: {error}") from error
            if answers == expected:
                return protocol
            communicator = MultiselectCommunicator(_Prefixed(answers, communicator.read_writer))
            try:
                header = await communicator.read()
                if header != MULTISELECT_PROTOCOL_ID:
                    raise MultiselectClientError(
                        f"multiselect protocol ID mismatch: expected {MULTISELECT_PROTOCOL_ID},"
                        f" got {header!r}"
                    )
                response = await communicator.read()
            except MultiselectCommunicatorError as error:
                raise MultiselectClientError(
                    f"protocol read failed: {error}, protocol={protocol}"
                ) from error
            if response == protocol:
                return protocol
            if response == _NOT_FOUND:
                raise MultiselectClientError(
                    f"protocols not supported: tried {list(protocols)},"
                    f" timeout={negotiate_timeout}s"
                )
            raise MultiselectClientError(
                f"unrecognized response: {response!r}, expected {protocol!r} or"
                f" {_NOT_FOUND!r}, protocol={protocol}"
            )
        raise MultiselectClientError(
            f"response timed out after {negotiate_timeout}s, protocols tried: {list(protocols)}"
        )


class _CoalescingMultiselect(Multiselect):
    """The listener's multistream-select answering in one write (issue 17).

    py-libp2p 0.8.1 writes its ``/multistream/1.0.0`` first, then reads the dialer's, then
    the protocol id, and echoes it: two writes. This listener reads the dialer's header first
    (as js-libp2p's does); if the protocol id came with it (a dialer that sends both at once:
    :class:`_OneWriteMultiselectClient`, go, js), the header and the echo go out together;
    otherwise (a dialer waiting for our header before proposing, as py-libp2p's) the header
    goes out at once, as before.
    """

    async def negotiate(
        self, communicator: Any, negotiate_timeout: int = 30
    ) -> tuple[TProtocol | None, Any]:
        if not isinstance(communicator, MultiselectCommunicator):
            return await super().negotiate(communicator, negotiate_timeout)
        read_writer = communicator.read_writer

        async def read() -> str:
            try:
                return await communicator.read()
            except MultiselectCommunicatorError as error:
                raise MultiselectError() from error

        async def write(data: bytes) -> None:
            try:
                await read_writer.write(data)
            except _WRITE_ERRORS as error:
                raise MultiselectError() from error

        try:
            with trio.fail_after(negotiate_timeout):
                header = await read()
                if header != MULTISELECT_PROTOCOL_ID:
                    raise MultiselectError(
                        f"multiselect protocol ID mismatch: received handshake_contents={header}"
                    )
                pending = _MULTISELECT_HEADER
                if not _has_unread_bytes(read_writer):
                    await write(pending)
                    pending = b""
                while True:
                    command = await read()
                    if command == "ls":
                        listed = "\n".join(p for p in self.handlers if p is not None) + "\n"
                        await write(pending + encode_delim(listed.encode()))
                    else:
                        protocol = TProtocol(command) if command else None
                        if protocol in self.handlers:
                            await write(pending + encode_delim(command.encode()))
                            return protocol, self.handlers[protocol]
                        await write(pending + encode_delim(_NOT_FOUND.encode()))
                    pending = b""
        except trio.TooSlowError:
            raise MultiselectError("handshake read timeout") from None


def _select_in_one_round_trip(host: BasicHost, upgrader: TransportUpgrader) -> None:
    """Install the one-write multistream-select on ``host``'s streams and on the connection
    upgrades (security and muxer negotiation) of ``upgrader``."""
    if _transport_off("select"):
        return
    host.multiselect = _CoalescingMultiselect(host.multiselect.handlers)
    host.multiselect_client = _OneWriteMultiselectClient()
    for multistream in (upgrader.security_multistream, upgrader.muxer_multistream):
        selector = multistream._selector
        selector.multiselect = _CoalescingMultiselect(selector.multiselect.handlers)
        selector.multiselect_client = _OneWriteMultiselectClient()
