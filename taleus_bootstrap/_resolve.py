"""Resolving an unconfirmed outcome: ``/taleus/bootstrap-resolve/1.0.0`` (protocol section 14).

The invitee whose last frame was not followed by the inviter's orderly end of stream does not
know whether the inviter recorded the tally. The inviter's record decides (it commits the token's
use before its own last frame, or on reading the invitee's): the invitee opens a stream on this
sibling protocol, sends one ``resolve`` frame naming the inviter's session id, and reads one
``resolution`` (``committed``, ``released``, ``pending`` or ``unknown``) or ``rejected`` frame.
Framing is the bootstrap protocol's (varint length, JSON object).

Sans-I/O apart from the two small coroutines at the end, which take any byte stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Final, Literal, Protocol

from pydantic import Field, TypeAdapter

from ._channel import ByteStream, FrameChannel, StreamBroken
from ._codec import encode_varint
from ._errors import RejectionCode, RemoteProtocolError
from ._events import AuditEvent, SessionOutcome, SessionStarted
from ._frames import Rejected, SessionIdStr, _Model
from ._lazy import LazyModule

if TYPE_CHECKING:
    import trio
else:  # imported on first use: the store's synchronous uses never need it
    trio = LazyModule("trio")

__all__ = [
    "MAX_RESOLVE_FRAME_BYTES",
    "RecordedOutcome",
    "OutcomeHook",
    "Resolution",
    "ResolveRequest",
    "ask_outcome",
    "outcome_from_audit",
    "read_resolve_request",
]

MAX_RESOLVE_FRAME_BYTES: Final = 256
"""Largest ``resolve`` / ``resolution`` frame body: both are under 150 bytes."""

RecordedOutcome = Literal["committed", "released", "pending", "unknown"]
"""What the inviter recorded for a session of the asking peer: ``committed`` (the tally is
formed), ``released`` (the session failed; nothing is kept), ``pending`` (still running, or not
settled yet: ask again later), ``unknown`` (no session of that id for the asking peer)."""


class ResolveRequest(_Model):
    """Invitee → inviter: what did you record for this session?"""

    type: Literal["resolve"] = "resolve"
    session_id: SessionIdStr


class Resolution(_Model):
    """Inviter → invitee: the answer."""

    type: Literal["resolution"] = "resolution"
    session_id: SessionIdStr
    outcome: RecordedOutcome


_ANY: Final[TypeAdapter[ResolveRequest | Resolution | Rejected]] = TypeAdapter(
    Annotated[ResolveRequest | Resolution | Rejected, Field(discriminator="type")]
)


class OutcomeHook(Protocol):
    """Optional hook (``SessionHooks.outcomes``): what the inviter's store recorded for a
    session, for the peer asking. It must answer from durable records (what a restart keeps),
    ``unknown`` for a session id that is not the peer's, and never raise for an unknown id."""

    async def recorded_outcome(self, session_id: str, peer_id: str) -> RecordedOutcome:
        """The outcome recorded for ``session_id`` if ``peer_id`` was its peer."""
        ...


def outcome_from_audit(events: Iterable[AuditEvent], peer_id: str) -> RecordedOutcome:
    """What an inviter's audit trail of one session says to ``peer_id`` asking about it: the
    reference backends' :class:`OutcomeHook` (a session recovered as completed, ``ABORTED``
    with its tally id, counts as committed)."""
    started: SessionStarted | None = None
    last: SessionOutcome | None = None
    for event in events:
        if isinstance(event, SessionStarted) and started is None:
            started = event
        elif isinstance(event, SessionOutcome):
            last = event
    if started is None or started.side != "inviter" or started.peer_id != peer_id:
        return "unknown"
    if last is None:
        return "pending"
    if last.final_state == "COMPLETED" or last.tally_id is not None:
        return "committed"
    return "released"


def encode(message: ResolveRequest | Resolution | Rejected) -> bytes:
    """The wire bytes of one message of the resolve protocol."""
    body = message.model_dump_json().encode()
    assert len(body) <= MAX_RESOLVE_FRAME_BYTES
    return encode_varint(len(body)) + body


async def _read_one(stream: ByteStream) -> ResolveRequest | Resolution | Rejected:
    """One message, or ``RemoteProtocolError`` (``malformed`` / ``frame_too_large``)."""
    channel = FrameChannel(stream, max_frame_bytes=MAX_RESOLVE_FRAME_BYTES, adapter=_ANY)
    return await channel.receive()  # type: ignore[return-value]


async def read_resolve_request(stream: ByteStream) -> ResolveRequest:
    """The inviter's side: the one ``resolve`` frame a stream of this protocol carries."""
    message = await _read_one(stream)
    if not isinstance(message, ResolveRequest):
        raise RemoteProtocolError(RejectionCode.MALFORMED, f"expected resolve, got {message.type}")
    return message


async def ask_outcome(stream: ByteStream, session_id: str, bound: float) -> RecordedOutcome:
    """The invitee's side, over an open stream of this protocol: send ``resolve``, read the
    answer within ``bound`` seconds, half-close. Raises ``RemoteProtocolError`` for a
    refusal (its code), a malformed answer or silence (``timeout``)."""
    with trio.move_on_after(bound):
        await stream.write(encode(ResolveRequest(session_id=session_id)))
        message = await _read_one(stream)
        with contextlib.suppress(StreamBroken):
            await stream.close()
        if isinstance(message, Rejected):
            raise RemoteProtocolError(message.code, f"resolution refused: {message.code}")
        if not isinstance(message, Resolution) or message.session_id != session_id:
            raise RemoteProtocolError(RejectionCode.MALFORMED, "expected this session's answer")
        return message.outcome
    raise RemoteProtocolError(RejectionCode.TIMEOUT, f"no resolution within {bound:g} s")
