"""taleus-bootstrap: form a Taleus tally between two parties who have never met, over libp2p.

The inviter runs a :class:`SessionManager` on its libp2p host and hands out
:class:`BootstrapLink` texts; the invitee calls :func:`initiate_bootstrap` with one. Over a single
``/taleus/bootstrap/2.0.0`` stream the two validate the token and each other, the stock party
provisions the shared database through its :class:`DatabaseHook`, and both confirm.

Each side's rules live in a sans-I/O protocol object (:class:`InviterProtocol`,
:class:`InviteeProtocol`); one driver runs both over a byte stream (:func:`run_invitee` takes
any stream, :func:`initiate_bootstrap` dials one over libp2p first).
"""

import logging

from ._actions import (
    Action,
    AwaitPeerEnd,
    CallHook,
    Close,
    Dial,
    Done,
    EndStream,
    Interruption,
    Receive,
    Send,
)
from ._bootstrap import initiate_bootstrap, run_invitee
from ._codec import (
    DEFAULT_MAX_FRAME_BYTES,
    AnyFrame,
    FrameDecoder,
    decode_frame_body,
    encode_frame,
)
from ._config import HostLimits, InviteeConfig, ManagerConfig
from ._errors import (
    BootstrapError,
    BootstrapProtocolError,
    BootstrapProvisionError,
    BootstrapRejected,
    BootstrapTimeout,
    BootstrapUnreachable,
    InsecureHostError,
    LinkContentError,
    LinkError,
    LinkExpiredError,
    LinkFormatError,
    LocalProtocolError,
    ProtocolError,
    RejectionCode,
    RemoteProtocolError,
)
from ._events import (
    AdmissionSummary,
    AuditEvent,
    AuditLevel,
    ContactReceived,
    HookError,
    Rejection,
    SessionOutcome,
    SessionStarted,
    StateChanged,
    token_digest,
)
from ._frames import (
    Accepted,
    Ack,
    Contact,
    DatabaseInfo,
    Frame,
    Provision,
    Provisioned,
    Rejected,
    Role,
    Tally,
)
from ._hooks import (
    AuditHook,
    DatabaseHook,
    IdentityHook,
    InviteeHooks,
    NoopAudit,
    ProvisionRequest,
    ProvisionResult,
    RefuseIdentity,
    SessionHooks,
    TokenHook,
    TokenInfo,
    batched_audit,
)
from ._invitee import BootstrapResult, InviteeProtocol
from ._inviter import InviterProtocol
from ._libp2p import (
    PROTOCOL_ID,
    host_multiaddrs,
    new_bootstrap_host,
    open_bootstrap_stream,
    remote_peer_id,
    running_host,
    set_guarded_stream_handler,
)
from ._link import LINK_PREFIX, BootstrapLink, TokenMinter, mint_link
from ._manager import ADMISSION_AUDIT_ID, ManagerStatistics, SessionManager, open_session_manager
from ._service import ServedBackend, ServingNode, serve_backend, tune_garbage_collector
from ._session import BootstrapSession, SessionRecord
from ._states import (
    INVITEE_TRANSITIONS,
    INVITER_TRANSITIONS,
    IllegalTransition,
    InviteeState,
    InviterState,
    StateMachine,
    TransitionRecord,
    Trigger,
)
from ._version import __version__

# A library does not print: without logging configured by the application, records stop here
# instead of reaching logging's last-resort handler on stderr.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ADMISSION_AUDIT_ID",
    "DEFAULT_MAX_FRAME_BYTES",
    "INVITEE_TRANSITIONS",
    "INVITER_TRANSITIONS",
    "LINK_PREFIX",
    "PROTOCOL_ID",
    "Accepted",
    "Ack",
    "Action",
    "AdmissionSummary",
    "AnyFrame",
    "AuditEvent",
    "AuditHook",
    "AuditLevel",
    "AwaitPeerEnd",
    "BootstrapError",
    "BootstrapLink",
    "BootstrapProtocolError",
    "BootstrapProvisionError",
    "BootstrapRejected",
    "BootstrapResult",
    "BootstrapSession",
    "BootstrapTimeout",
    "BootstrapUnreachable",
    "CallHook",
    "Close",
    "Contact",
    "ContactReceived",
    "DatabaseHook",
    "DatabaseInfo",
    "Dial",
    "Done",
    "EndStream",
    "Frame",
    "FrameDecoder",
    "HookError",
    "HostLimits",
    "IdentityHook",
    "IllegalTransition",
    "InsecureHostError",
    "Interruption",
    "InviteeConfig",
    "InviteeHooks",
    "InviteeProtocol",
    "InviteeState",
    "InviterProtocol",
    "InviterState",
    "LinkContentError",
    "LinkError",
    "LinkExpiredError",
    "LinkFormatError",
    "LocalProtocolError",
    "ManagerConfig",
    "ManagerStatistics",
    "NoopAudit",
    "ProtocolError",
    "Provision",
    "ProvisionRequest",
    "ProvisionResult",
    "Provisioned",
    "Receive",
    "RefuseIdentity",
    "Rejected",
    "Rejection",
    "RejectionCode",
    "RemoteProtocolError",
    "Role",
    "Send",
    "SessionHooks",
    "SessionManager",
    "SessionOutcome",
    "SessionRecord",
    "ServedBackend",
    "ServingNode",
    "SessionStarted",
    "StateChanged",
    "StateMachine",
    "Tally",
    "TokenHook",
    "TokenInfo",
    "TokenMinter",
    "TransitionRecord",
    "Trigger",
    "__version__",
    "batched_audit",
    "decode_frame_body",
    "encode_frame",
    "host_multiaddrs",
    "initiate_bootstrap",
    "mint_link",
    "new_bootstrap_host",
    "open_bootstrap_stream",
    "open_session_manager",
    "remote_peer_id",
    "run_invitee",
    "running_host",
    "serve_backend",
    "set_guarded_stream_handler",
    "token_digest",
    "tune_garbage_collector",
]
