"""Varint length-prefixed JSON framing, sans-I/O.

A frame is an unsigned LEB128 varint (at most :data:`MAX_VARINT_BYTES` bytes, minimal encoding)
giving the body length, then that many bytes of UTF-8 JSON holding one object. The size limit is
checked as soon as the prefix is complete, before any of the body is buffered.

:class:`FrameDecoder` is fed bytes as they arrive and hands out whole frames, in the manner of
h11's ``receive_data`` / ``next_event``; it raises :class:`RemoteProtocolError` with the code to
send (``frame_too_large`` or ``malformed``) and never any other exception.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from ._errors import LocalProtocolError, RejectionCode, RemoteProtocolError
from ._frames import FRAME_ADAPTER, Accepted, Ack, Contact, Provisioned, Rejected

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "MAX_VARINT_BYTES",
    "AnyFrame",
    "FrameDecoder",
    "decode_frame_body",
    "decode_varint",
    "encode_frame",
    "encode_varint",
]

DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024
MAX_VARINT_BYTES: Final = 4
"""A 4-byte varint holds lengths up to 2**28 - 1, far above any sane ``max_frame_bytes``."""

AnyFrame = Contact | Accepted | Provisioned | Ack | Rejected


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128 encoding of ``value`` (minimal)."""
    if value < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes | bytearray) -> tuple[int, int] | None:
    """Decode a varint at the start of ``data``: ``(value, bytes used)``, or ``None`` if incomplete.

    Raises :class:`RemoteProtocolError` (``malformed``) for a prefix longer than
    :data:`MAX_VARINT_BYTES` or a non-minimal encoding.
    """
    value = 0
    for index in range(min(len(data), MAX_VARINT_BYTES)):
        byte = data[index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            if index > 0 and byte == 0:
                raise RemoteProtocolError(RejectionCode.MALFORMED, "non-minimal varint")
            return value, index + 1
    if len(data) >= MAX_VARINT_BYTES:
        raise RemoteProtocolError(
            RejectionCode.MALFORMED, f"length prefix longer than {MAX_VARINT_BYTES} bytes"
        )
    return None


def encode_frame(frame: AnyFrame, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """The wire bytes of ``frame``: varint length, then compact UTF-8 JSON.

    Raises :class:`LocalProtocolError` (``internal_error``) if the body would exceed
    ``max_frame_bytes``: this side must never send what a peer would refuse.
    """
    body = frame.model_dump_json().encode()
    if len(body) > max_frame_bytes:
        raise LocalProtocolError(
            RejectionCode.INTERNAL_ERROR,
            f"outgoing {frame.type} frame is {len(body)} bytes, over {max_frame_bytes}",
        )
    return encode_varint(len(body)) + body


def decode_frame_body(
    body: bytes | bytearray, adapter: TypeAdapter[Any] = FRAME_ADAPTER
) -> AnyFrame:
    """Validate one frame body (without its prefix); ``malformed`` on any defect. (``adapter``:
    another protocol's messages in the same framing, e.g. the resolve protocol's.)"""
    try:
        return adapter.validate_json(bytes(body))  # type: ignore[no-any-return]
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        where = ".".join(str(part) for part in errors[0]["loc"]) if errors else ""
        kind = errors[0]["type"] if errors else "invalid"
        raise RemoteProtocolError(
            RejectionCode.MALFORMED, f"invalid frame: {kind} at {where or 'top level'}"
        ) from None
    except (RecursionError, ValueError) as exc:  # defensive: a parser limit, never expected
        raise RemoteProtocolError(
            RejectionCode.MALFORMED, f"invalid frame: {type(exc).__name__}"
        ) from None


class FrameDecoder:
    """Incremental decoder: :meth:`feed` bytes, then :meth:`next_frame` until it returns ``None``.

    Buffers at most one frame (``max_frame_bytes`` plus its prefix) beyond what was handed out;
    after raising, the decoder is spent and keeps raising the same error.
    """

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        *,
        adapter: TypeAdapter[Any] = FRAME_ADAPTER,
    ) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._adapter = adapter
        self._buffer = bytearray()
        self._body_length: int | None = None
        self._error: RemoteProtocolError | None = None
        self._eof = False

    @property
    def bytes_needed(self) -> int:
        """How many more bytes complete the frame in progress (at least 1)."""
        if self._body_length is None:
            return 1
        return max(1, self._body_length - len(self._buffer))

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Add received bytes. Feeding ``b""`` marks end of stream (see :meth:`next_frame`)."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("bytes fed after end of stream")
        self._buffer += data

    def next_frame(self) -> AnyFrame | None:
        """The next complete frame, or ``None`` when more bytes are needed.

        At end of stream with a partial frame buffered, raises ``malformed`` (truncated frame).
        At end of stream with nothing buffered, returns ``None``; check :attr:`at_eof`.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_frame()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    @property
    def at_eof(self) -> bool:
        """True once the end of stream was fed and every whole frame was handed out."""
        return self._eof and not self._buffer and self._body_length is None

    def _next_frame(self) -> AnyFrame | None:
        if self._body_length is None:
            decoded = decode_varint(self._buffer)
            if decoded is None:
                self._check_truncation()
                return None
            length, used = decoded
            if length > self.max_frame_bytes:
                raise RemoteProtocolError(
                    RejectionCode.FRAME_TOO_LARGE,
                    f"length prefix {length} over max_frame_bytes {self.max_frame_bytes}",
                )
            del self._buffer[:used]
            self._body_length = length
        if len(self._buffer) < self._body_length:
            self._check_truncation()
            return None
        body = bytes(self._buffer[: self._body_length])
        del self._buffer[: self._body_length]
        self._body_length = None
        if not body:
            raise RemoteProtocolError(RejectionCode.MALFORMED, "empty frame body")
        return decode_frame_body(body, self._adapter)

    def _check_truncation(self) -> None:
        if self._eof and (self._buffer or self._body_length is not None):
            raise RemoteProtocolError(RejectionCode.MALFORMED, "stream ended inside a frame")
