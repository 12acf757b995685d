"""Typed audit events handed to the audit hook.

Events never carry a token (only :func:`token_digest` of it) nor database credentials (a
``Provision`` holds only a ``credentials_ref``). Hook exceptions are kept here (type and message,
scrubbed of the session's secrets and cut to ``MAX_ERROR_CHARS``: :mod:`._redact`), never on the
wire.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Final, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from ._config import AuditLevel
from ._errors import RejectionCode
from ._frames import Role, UtcDatetime, _Model

__all__ = [
    "AdmissionSummary",
    "AuditEvent",
    "AuditLevel",
    "AwaitingDecision",
    "ContactReceived",
    "HookError",
    "OutcomeResolved",
    "Rejection",
    "SessionOutcome",
    "SessionStarted",
    "StateChanged",
    "token_digest",
]

Side = Literal["inviter", "invitee"]
MAX_ERROR_CHARS: Final = 500
MAX_SUMMARY_PEERS: Final = 10


def token_digest(token: str) -> str:
    """SHA-256 hex digest of a token: what logs, audit events and stores keep instead of it."""
    return hashlib.sha256(b"taleus-bootstrap-token\x00" + token.encode()).hexdigest()


class _Event(_Model):
    at: UtcDatetime
    side: Side


class SessionStarted(_Event):
    """A session began: a stream was accepted (inviter) or a bootstrap was initiated (invitee)."""

    kind: Literal["session_started"] = "session_started"
    peer_id: str | None


class StateChanged(_Event):
    """One state transition, as recorded by the state machine."""

    kind: Literal["state_changed"] = "state_changed"
    seq: int
    from_state: str
    to_state: str
    trigger: str
    monotonic: float
    time_in_previous_s: float


class ContactReceived(_Event):
    """The inviter read a well-formed ``contact`` frame (the token only as a digest)."""

    kind: Literal["contact_received"] = "contact_received"
    token_digest: str
    party_id: str
    cadre_addr_count: int


class Rejection(_Event):
    """A ``rejected`` frame was sent or received, or the session failed before it could be.

    ``detail`` says why in words for operators; ``error_type`` / ``error_message`` keep a hook's
    exception. None of it goes on the wire.
    """

    kind: Literal["rejection"] = "rejection"
    code: RejectionCode
    direction: Literal["sent", "received", "none"]
    detail: str
    retry_after_s: float | None = None
    error_type: str | None = None
    error_message: Annotated[str, Field(max_length=MAX_ERROR_CHARS)] | None = None


class HookError(_Event):
    """A hook failed where the session could not fail any more (after completion)."""

    kind: Literal["hook_error"] = "hook_error"
    hook: str
    detail: str
    error_type: str | None = None
    error_message: Annotated[str, Field(max_length=MAX_ERROR_CHARS)] | None = None


class SessionOutcome(_Event):
    """The terminal record of a session: its final state and, on success, the tally.

    ``path``: the states the session went through, first to last, recorded at the ``minimal``
    audit level (which keeps no ``StateChanged`` events); absent (and not serialized) at
    ``full``.

    ``confirmed``, of a completed session: True when this side read the session's last frame,
    or wrote it and then saw the peer's orderly end of stream (sent once the peer's own outcome
    was durable); False when it wrote the last frame and that end did not come (the peer may
    not have recorded the tally: the outcome is *unconfirmed*). Absent (not serialized) for a
    failed session, and in events written before it existed.
    """

    kind: Literal["session_outcome"] = "session_outcome"
    final_state: str
    code: RejectionCode | None
    role: Role | None
    tally_id: str | None
    duration_s: float
    path: tuple[str, ...] | None = None
    confirmed: bool | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_fields(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in ("path", "confirmed"):
                if data.get(name) is None:
                    data.pop(name, None)
        return data


class AwaitingDecision(_Event):
    """Invitee, just before its decisive frame (the stock flow's ``ack``, the foil flow's
    ``provisioned``): from here the inviter's record decides the outcome, so this is what a
    restarted invitee needs to ask it (protocol section 14) — the inviter's session id, peer id
    and the address that answered — and which tally is at stake."""

    kind: Literal["awaiting_decision"] = "awaiting_decision"
    inviter_session_id: str
    inviter_peer_id: str
    inviter_addr: str
    inviter_role: Role
    tally_id: str


class OutcomeResolved(_Event):
    """An unconfirmed outcome settled by asking the peer (protocol section 14): what the peer
    recorded (``answer``), and so what became of this side's tally (committed for
    ``committed``, released for ``released`` or ``unknown``)."""

    kind: Literal["outcome_resolved"] = "outcome_resolved"
    answer: Literal["committed", "released", "unknown"]
    tally_id: str


class AdmissionSummary(_Event):
    """Streams refused at admission (``busy``, ``rate_limited``, ``shutting_down``) over one
    window: no session exists for a refused stream, so they are audited together, periodically.

    ``top_peers``: the peer ids refused most often in the window, as ``[digest, count]`` pairs
    (digests, never peer ids); ``peers``: how many distinct peers were refused (counted up to a
    bound, see ``peers_capped``).
    """

    kind: Literal["admission_summary"] = "admission_summary"
    window_start: UtcDatetime
    window_s: float
    refused: dict[RejectionCode, int]
    top_peers: list[tuple[str, int]]
    peers: int
    peers_capped: bool


AuditEvent = Annotated[
    SessionStarted
    | StateChanged
    | ContactReceived
    | Rejection
    | HookError
    | SessionOutcome
    | AwaitingDecision
    | OutcomeResolved
    | AdmissionSummary,
    Field(discriminator="kind"),
]
"""Any audit event, discriminated on ``kind``."""
