"""taleus-bootstrap: form a Taleus tally between two parties who have never met, over libp2p.

The inviter runs a :class:`SessionManager` on its libp2p host and hands out
:class:`BootstrapLink` texts; the invitee calls :func:`initiate_bootstrap` with one. Over a single
``/taleus/bootstrap/2.0.0`` stream the two validate the token and each other, the stock party
provisions the shared database through its :class:`DatabaseHook`, and both confirm.

Each side's rules live in a sans-I/O protocol object (:class:`InviterProtocol`,
:class:`InviteeProtocol`); one driver runs both over a byte stream (:func:`run_invitee` takes
any stream, :func:`initiate_bootstrap` dials one over libp2p first).
"""

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
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
    from ._bootstrap import initiate_bootstrap, resolve_bootstrap, run_invitee
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
        BootstrapReleased,
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
        AwaitingDecision,
        ContactReceived,
        HookError,
        OutcomeResolved,
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
        RESOLVE_PROTOCOL_ID,
        host_multiaddrs,
        new_bootstrap_host,
        open_bootstrap_stream,
        remote_peer_id,
        running_host,
        set_guarded_stream_handler,
    )
    from ._link import LINK_PREFIX, BootstrapLink, TokenMinter, mint_link
    from ._manager import (
        ADMISSION_AUDIT_ID,
        ManagerStatistics,
        SessionManager,
        open_session_manager,
    )
    from ._nodekey import load_or_create_node_key
    from ._resolve import (
        OutcomeHook,
        RecordedOutcome,
        Resolution,
        ResolveRequest,
        outcome_from_audit,
    )
    from ._service import ServedBackend, ServingNode, serve_backend, tune_garbage_collector
    from ._session import BootstrapSession, SessionRecord
    from ._settle import StreamOpener, settle_unconfirmed
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

# The public names, by the module that defines them: imported on first use (PEP 562), so that
# ``import taleus_bootstrap`` (and the command line's ``--help``) does not pay for libp2p,
# trio and OpenTelemetry until a name that needs them is used.
_LAZY_NAMES: dict[str, tuple[str, ...]] = {
    "_actions": (
        "Action",
        "AwaitPeerEnd",
        "CallHook",
        "Close",
        "Dial",
        "Done",
        "EndStream",
        "Interruption",
        "Receive",
        "Send",
    ),
    "_bootstrap": (
        "initiate_bootstrap",
        "resolve_bootstrap",
        "run_invitee",
    ),
    "_codec": (
        "DEFAULT_MAX_FRAME_BYTES",
        "AnyFrame",
        "FrameDecoder",
        "decode_frame_body",
        "encode_frame",
    ),
    "_config": (
        "HostLimits",
        "InviteeConfig",
        "ManagerConfig",
    ),
    "_errors": (
        "BootstrapError",
        "BootstrapProtocolError",
        "BootstrapProvisionError",
        "BootstrapRejected",
        "BootstrapReleased",
        "BootstrapTimeout",
        "BootstrapUnreachable",
        "InsecureHostError",
        "LinkContentError",
        "LinkError",
        "LinkExpiredError",
        "LinkFormatError",
        "LocalProtocolError",
        "ProtocolError",
        "RejectionCode",
        "RemoteProtocolError",
    ),
    "_events": (
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
    ),
    "_frames": (
        "Accepted",
        "Ack",
        "Contact",
        "DatabaseInfo",
        "Frame",
        "Provision",
        "Provisioned",
        "Rejected",
        "Role",
        "Tally",
    ),
    "_hooks": (
        "AuditHook",
        "DatabaseHook",
        "IdentityHook",
        "InviteeHooks",
        "NoopAudit",
        "ProvisionRequest",
        "ProvisionResult",
        "RefuseIdentity",
        "SessionHooks",
        "TokenHook",
        "TokenInfo",
        "batched_audit",
    ),
    "_invitee": (
        "BootstrapResult",
        "InviteeProtocol",
    ),
    "_inviter": ("InviterProtocol",),
    "_libp2p": (
        "PROTOCOL_ID",
        "RESOLVE_PROTOCOL_ID",
        "host_multiaddrs",
        "new_bootstrap_host",
        "open_bootstrap_stream",
        "remote_peer_id",
        "running_host",
        "set_guarded_stream_handler",
    ),
    "_link": (
        "LINK_PREFIX",
        "BootstrapLink",
        "TokenMinter",
        "mint_link",
    ),
    "_nodekey": ("load_or_create_node_key",),
    "_manager": (
        "ADMISSION_AUDIT_ID",
        "ManagerStatistics",
        "SessionManager",
        "open_session_manager",
    ),
    "_resolve": (
        "OutcomeHook",
        "RecordedOutcome",
        "Resolution",
        "ResolveRequest",
        "outcome_from_audit",
    ),
    "_service": (
        "ServedBackend",
        "ServingNode",
        "serve_backend",
        "tune_garbage_collector",
    ),
    "_session": (
        "BootstrapSession",
        "SessionRecord",
    ),
    "_settle": (
        "StreamOpener",
        "settle_unconfirmed",
    ),
    "_states": (
        "INVITEE_TRANSITIONS",
        "INVITER_TRANSITIONS",
        "IllegalTransition",
        "InviteeState",
        "InviterState",
        "StateMachine",
        "TransitionRecord",
        "Trigger",
    ),
}
_MODULE_OF: dict[str, str] = {
    name: module for module, names in _LAZY_NAMES.items() for name in names
}


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is used."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


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
    "RESOLVE_PROTOCOL_ID",
    "Accepted",
    "Ack",
    "Action",
    "AdmissionSummary",
    "AnyFrame",
    "AuditEvent",
    "AuditHook",
    "AuditLevel",
    "AwaitingDecision",
    "AwaitPeerEnd",
    "BootstrapError",
    "BootstrapLink",
    "BootstrapProtocolError",
    "BootstrapProvisionError",
    "BootstrapRejected",
    "BootstrapReleased",
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
    "OutcomeHook",
    "OutcomeResolved",
    "RecordedOutcome",
    "Resolution",
    "ResolveRequest",
    "StreamOpener",
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
    "outcome_from_audit",
    "resolve_bootstrap",
    "settle_unconfirmed",
    "load_or_create_node_key",
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
