"""What goes in and out of a protocol object: the actions it asks its driver to perform, why a
session may be interrupted, and the failures a session records.

Sans-I/O: data only. See :mod:`._protocol` for how a protocol object uses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final, Literal, NamedTuple

from ._codec import AnyFrame
from ._errors import LocalProtocolError, RejectionCode, RemoteProtocolError
from ._frames import Rejected

__all__ = [
    "Action",
    "AwaitPeerEnd",
    "CallHook",
    "Close",
    "Crash",
    "Dial",
    "Done",
    "EndStream",
    "HookFailure",
    "Interruption",
    "PeerRejected",
    "Purpose",
    "Receive",
    "Send",
    "TimedOut",
    "Unreachable",
]

Purpose = Literal["exchange", "audit", "after_completion", "cleanup"]
"""Why a hook is called: an exchange step, an audit batch, a call after the last frame, or a
release after a failure."""

# -- actions ------------------------------------------------------------------------------
#
# Named tuples: immutable, and cheap to build (a session asks for about fifteen).
# ``bound``: seconds the action may take. ``shielded``: the action runs under its own bound
# only, outside the session's deadline and cancellation (cleanup, and what follows the last
# frame); otherwise it runs under the session's one cancel scope, whose deadline is the
# earlier of the session's and ``bound`` from now.


class Dial(NamedTuple):
    """Open the stream (invitee); answer with :meth:`dialed` or :meth:`dial_failed`."""

    step: str
    bound: float
    shielded: bool = False


class Send(NamedTuple):
    """Write ``payload`` (the encoded ``frame``); answer with :meth:`sent` / :meth:`send_failed`."""

    frame: AnyFrame
    payload: bytes
    step: str
    bound: float
    shielded: bool = False


class Receive(NamedTuple):
    """Read one frame; answer with :meth:`frame_received` or :meth:`receive_failed`."""

    step: str
    bound: float
    shielded: bool = False


class CallHook(NamedTuple):
    """Await ``hooks.<hook>.<method>(*args, **kwargs)``; answer with :meth:`hook_returned` or
    :meth:`hook_raised`."""

    hook: str
    method: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    step: str
    bound: float
    shielded: bool
    purpose: Purpose

    @property
    def name(self) -> str:
        """``hook.method``, e.g. ``token.validate``."""
        return f"{self.hook}.{self.method}"


class EndStream(NamedTuple):
    """End the stream after a failure: write ``rejection`` (an encoded ``rejected`` frame; None:
    nothing), half-close, linger, reset (section 10), the write and the rest each within
    ``bound``; answer with :meth:`stream_ended`."""

    rejection: bytes | None
    step: str
    bound: float
    shielded: bool = True


class Close(NamedTuple):
    """Half-close after the last frame of a complete session; answer with :meth:`stream_ended`."""

    step: str
    bound: float
    shielded: bool = True


class AwaitPeerEnd(NamedTuple):
    """Wait for the peer's orderly end of stream (what it sends is dropped); answer with
    :meth:`peer_end`: True only if it ended its side, with nothing more sent and no reset,
    within ``bound``."""

    step: str
    bound: float
    shielded: bool = True


class Done(NamedTuple):
    """The session is over: its terminal state, outcome and cleanup are recorded."""

    step: str = "done"
    bound: float = 0.0
    shielded: bool = True


Action = Dial | Send | Receive | CallHook | EndStream | Close | AwaitPeerEnd | Done
"""Everything a protocol object may ask its driver to do."""

DONE: Final = Done()


class Interruption(StrEnum):
    """Why the session's cancel scope ended the current action."""

    SESSION_TIMEOUT = "session_timeout"
    """The whole-session deadline passed."""
    SHUTDOWN = "shutdown"
    """The session was cancelled by its manager (the shutdown grace ran out)."""
    CANCELLED = "cancelled"
    """Cancelled from outside (the host stopped, the caller was cancelled)."""


# -- failures -----------------------------------------------------------------------------


class HookFailure(LocalProtocolError):
    """A hook raised or returned something invalid; keeps the exception for the audit trail."""

    def __init__(self, code: RejectionCode, hook: str, error: BaseException) -> None:
        super().__init__(code, f"{hook} hook failed")
        self.error = error


class TimedOut(LocalProtocolError):
    """A step or the whole session ran out of time (trigger ``timed_out``)."""

    def __init__(self, detail: str) -> None:
        super().__init__(RejectionCode.TIMEOUT, detail)


class PeerRejected(RemoteProtocolError):
    """The peer sent ``rejected``: nothing is sent back."""

    def __init__(self, frame: Rejected, peer: str) -> None:
        super().__init__(
            frame.code, f"{peer} rejected: {frame.code.value}", retry_after_s=frame.retry_after_s
        )


class Unreachable(LocalProtocolError):
    """No address could be dialed (invitee): no stream, nothing to send."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(RejectionCode.INTERNAL_ERROR, str(error))
        self.error = error


class Crash(LocalProtocolError):
    """A bug: a protocol rule or the driver raised (``internal_error``)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(RejectionCode.INTERNAL_ERROR, f"unexpected {type(error).__name__}")
        self.error = error
