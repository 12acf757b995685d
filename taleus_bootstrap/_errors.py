"""Errors, each carrying the wire rejection code it maps to.

Following h11's ``LocalProtocolError`` / ``RemoteProtocolError`` split, an error says who is at
fault (this side or the peer) and which :class:`RejectionCode` to send before the stream is reset.
The invitee's public exceptions (:class:`BootstrapError` and subclasses) carry the same code.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = [
    "BootstrapError",
    "BootstrapProtocolError",
    "BootstrapProvisionError",
    "BootstrapRejected",
    "BootstrapReleased",
    "BootstrapTimeout",
    "BootstrapUnreachable",
    "InsecureHostError",
    "LinkError",
    "LinkExpiredError",
    "LinkFormatError",
    "LinkContentError",
    "LocalProtocolError",
    "ProtocolError",
    "RejectionCode",
    "RemoteProtocolError",
]


class RejectionCode(StrEnum):
    """Every code a ``rejected`` frame may carry (PROTOCOL.md, "Rejection codes")."""

    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    SHUTTING_DOWN = "shutting_down"
    MALFORMED = "malformed"
    FRAME_TOO_LARGE = "frame_too_large"
    INVALID_TOKEN = "invalid_token"
    IDENTITY_REJECTED = "identity_rejected"
    ROLE_MISMATCH = "role_mismatch"
    PROVISION_FAILED = "provision_failed"
    TIMEOUT = "timeout"
    INTERNAL_ERROR = "internal_error"


class ProtocolError(Exception):
    """A protocol exchange cannot go on; ``code`` is what to send in ``rejected``.

    The message is for logs and audit only; it never goes on the wire.
    """

    def __init__(
        self, code: RejectionCode, detail: str = "", *, retry_after_s: float | None = None
    ) -> None:
        super().__init__(detail or code.value)
        self.code = code
        self.detail = detail or code.value
        self.retry_after_s = retry_after_s


class LocalProtocolError(ProtocolError):
    """This side (or one of its hooks) failed; the peer did nothing wrong."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something unacceptable (bad frame, bad token, wrong identity...)."""


class InsecureHostError(ValueError):
    """A libp2p host offers a security protocol other than Noise, so the peer ids it reports
    may be claimed rather than proven; build it with
    :func:`~taleus_bootstrap.new_bootstrap_host` (or opt in with ``allow_insecure_host=True``,
    for tests)."""


class LinkError(ValueError):
    """A bootstrap link could not be used."""


class LinkFormatError(LinkError):
    """The link text is not ``taleus:bootstrap:<base64url>`` (prefix, alphabet, padding, size)."""


class LinkContentError(LinkError):
    """The link decodes, but its JSON does not describe a valid link."""


class LinkExpiredError(LinkError):
    """The link's ``expires_at`` has passed; the invitee refuses it before dialing."""


class BootstrapError(Exception):
    """Base of the errors :func:`~taleus_bootstrap.initiate_bootstrap` raises for a failed exchange.

    ``code`` is the rejection code involved (received or sent), or ``None`` when the inviter
    could not be reached at all.

    ``unconfirmed``: set when the session failed *after* this side's last decisive frame (the
    foil flow's ``provisioned``: the inviter may have committed and sent an ``ack`` that never
    arrived). The tally is then held in doubt, neither committed nor released, and this is the
    result it would be: settle it with :func:`~taleus_bootstrap.resolve_bootstrap` (which
    :func:`~taleus_bootstrap.initiate_bootstrap` tries before raising).
    """

    def __init__(
        self, message: str, *, code: RejectionCode | None = None, session_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.session_id = session_id
        self.unconfirmed: Any = None  # a BootstrapResult (defined where it is made)


class BootstrapRejected(BootstrapError):
    """The inviter answered with a ``rejected`` frame."""

    def __init__(
        self,
        code: RejectionCode,
        retry_after_s: float | None = None,
        *,
        session_id: str | None = None,
    ) -> None:
        suffix = f" (retry after {retry_after_s:g} s)" if retry_after_s is not None else ""
        super().__init__(
            f"inviter rejected the bootstrap: {code.value}{suffix}",
            code=code,
            session_id=session_id,
        )
        self.retry_after_s = retry_after_s


class BootstrapProtocolError(BootstrapError):
    """The inviter misbehaved; this side sent ``rejected`` with ``code`` and gave up."""


class BootstrapProvisionError(BootstrapError):
    """This side's database hook failed (``provision_failed`` was sent)."""


class BootstrapReleased(BootstrapError):
    """An unconfirmed bootstrap was resolved with the inviter, which had not recorded it
    (protocol section 14): the tally was released on this side too."""


class BootstrapTimeout(BootstrapError):
    """A step or the whole session ran out of time (``timeout``)."""


class BootstrapUnreachable(BootstrapError):
    """No address of the link could be dialed; ``attempts`` lists ``(address, cause)`` pairs,
    one per attempt, the cause in words (``connection refused ...``, ``wrong peer id ...``,
    ``timed out after 5 s``...)."""

    def __init__(self, message: str, attempts: tuple[tuple[str, str], ...]) -> None:
        super().__init__(message, code=None)
        self.attempts = attempts
