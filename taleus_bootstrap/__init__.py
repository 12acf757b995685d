"""taleus-bootstrap: form a Taleus tally between two parties who have never met, over libp2p.

The inviter runs a :class:`SessionManager` on its libp2p host and hands out
:class:`BootstrapLink` texts; the invitee calls :func:`initiate_bootstrap` with one. Over a single
``/taleus/bootstrap/2.0.0`` stream the two validate the token and each other, the stock party
provisions the shared database through its :class:`DatabaseHook`, and both confirm.
"""

import logging

from ._codec import (
    DEFAULT_MAX_FRAME_BYTES,
    AnyFrame,
    FrameDecoder,
    decode_frame_body,
    encode_frame,
)
from ._config import HostLimits, InviteeConfig, ManagerConfig
from ._driver import SessionRecord
from ._errors import (
    BootstrapError,
    BootstrapProtocolError,
    BootstrapProvisionError,
    BootstrapRejected,
    BootstrapTimeout,
    BootstrapUnreachable,
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
    AuditEvent,
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
)
from ._invitee import BootstrapResult, initiate_bootstrap
from ._libp2p import (
    PROTOCOL_ID,
    host_multiaddrs,
    new_bootstrap_host,
    open_bootstrap_stream,
    remote_peer_id,
    running_host,
    set_guarded_stream_handler,
)
from ._link import LINK_PREFIX, BootstrapLink
from ._manager import ManagerStatistics, SessionManager, open_session_manager
from ._session import BootstrapSession
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

__version__ = "0.1.0"

# A library does not print: without logging configured by the application, records stop here
# instead of reaching logging's last-resort handler on stderr.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "INVITEE_TRANSITIONS",
    "INVITER_TRANSITIONS",
    "LINK_PREFIX",
    "PROTOCOL_ID",
    "Accepted",
    "Ack",
    "AnyFrame",
    "AuditEvent",
    "AuditHook",
    "BootstrapError",
    "BootstrapLink",
    "BootstrapProtocolError",
    "BootstrapProvisionError",
    "BootstrapRejected",
    "BootstrapResult",
    "BootstrapSession",
    "BootstrapTimeout",
    "BootstrapUnreachable",
    "Contact",
    "ContactReceived",
    "DatabaseHook",
    "DatabaseInfo",
    "Frame",
    "FrameDecoder",
    "HookError",
    "HostLimits",
    "IdentityHook",
    "IllegalTransition",
    "InviteeConfig",
    "InviteeHooks",
    "InviteeState",
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
    "RefuseIdentity",
    "Rejected",
    "Rejection",
    "RejectionCode",
    "RemoteProtocolError",
    "Role",
    "SessionHooks",
    "SessionManager",
    "SessionOutcome",
    "SessionRecord",
    "SessionStarted",
    "StateChanged",
    "StateMachine",
    "Tally",
    "TokenHook",
    "TokenInfo",
    "TransitionRecord",
    "Trigger",
    "__version__",
    "decode_frame_body",
    "encode_frame",
    "host_multiaddrs",
    "initiate_bootstrap",
    "new_bootstrap_host",
    "open_bootstrap_stream",
    "open_session_manager",
    "remote_peer_id",
    "running_host",
    "set_guarded_stream_handler",
    "token_digest",
]
