"""Configuration: one frozen pydantic model per side, every default a named constant.

The library never reads the environment; the CLI builds these models from its options and files.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import ConfigDict, Field, model_validator

from ._codec import DEFAULT_MAX_FRAME_BYTES
from ._frames import MAX_CADRE_ADDRS, MultiaddrStr, _Model

__all__ = [
    "AuditLevel",
    "DEFAULT_AUDIT_LEVEL",
    "DEFAULT_CLEANUP_INTERVAL",
    "DEFAULT_GLOBAL_BURST",
    "DEFAULT_GLOBAL_RATE_PER_S",
    "DEFAULT_MAX_CONCURRENT_SESSIONS",
    "DEFAULT_MAX_REFUSALS_IN_FLIGHT",
    "DEFAULT_BREAKER_FAILURES",
    "DEFAULT_BREAKER_OPEN",
    "DEFAULT_MAX_SESSION_HISTORY",
    "DEFAULT_MAX_TRACKED_PEERS",
    "DEFAULT_PEER_BURST",
    "DEFAULT_PEER_RATE",
    "DEFAULT_PEER_RATE_PERIOD",
    "DEFAULT_PROVISION_TIMEOUT",
    "DEFAULT_REFUSAL_SUMMARY_INTERVAL",
    "DEFAULT_RELEASE_TIMEOUT",
    "DEFAULT_SESSION_TIMEOUT",
    "DEFAULT_SHUTDOWN_GRACE",
    "DEFAULT_STEP_TIMEOUT",
    "HostLimits",
    "InviteeConfig",
    "ManagerConfig",
]

AuditLevel = Literal["full", "minimal"]
"""``full``: every event; ``minimal``: the start, rejections, hook errors and the outcome (which
then carries the session's path of states)."""

DEFAULT_MAX_CONCURRENT_SESSIONS: Final = 100
DEFAULT_BUSY_RETRY_AFTER: Final = 1.0
DEFAULT_BREAKER_FAILURES: Final = 20
DEFAULT_BREAKER_OPEN: Final = 5.0
DEFAULT_PEER_RATE: Final = 10
DEFAULT_PEER_RATE_PERIOD: Final = 60.0
DEFAULT_PEER_BURST: Final = 10
DEFAULT_GLOBAL_RATE_PER_S: Final = 200.0
DEFAULT_GLOBAL_BURST: Final = 400
DEFAULT_MAX_TRACKED_PEERS: Final = 10_000
DEFAULT_SESSION_TIMEOUT: Final = 30.0
DEFAULT_STEP_TIMEOUT: Final = 5.0
DEFAULT_PROVISION_TIMEOUT: Final = 10.0
DEFAULT_CLEANUP_TIMEOUT: Final = 5.0
DEFAULT_RELEASE_TIMEOUT: Final = 0.5
DEFAULT_MAX_SESSION_HISTORY: Final = 1000
DEFAULT_CLEANUP_INTERVAL: Final = 10.0
DEFAULT_SHUTDOWN_GRACE: Final = 5.0
DEFAULT_DIAL_TIMEOUT: Final = 5.0
DEFAULT_DIAL_ATTEMPTS: Final = 2
DEFAULT_DIAL_BACKOFF: Final = 0.25
DEFAULT_DIAL_BACKOFF_MAX: Final = 2.0
DEFAULT_RESOLVE_TIMEOUT: Final = 30.0
DEFAULT_AUDIT_LEVEL: Final[AuditLevel] = "full"
DEFAULT_MAX_REFUSALS_IN_FLIGHT: Final = 512
DEFAULT_REFUSAL_SUMMARY_INTERVAL: Final = 60.0

Seconds = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]


_CONFIG: Final = ConfigDict(
    frozen=True,
    extra="forbid",
    strict=False,  # configuration comes from files too: TOML arrays become tuples, ints floats
    allow_inf_nan=False,
    use_attribute_docstrings=True,  # field docstrings are the generated reference's text
)


class _Timeouts(_Model):
    model_config = _CONFIG

    session_timeout: Seconds = DEFAULT_SESSION_TIMEOUT
    """Upper bound on a whole session, from stream admission to its terminal state."""
    step_timeout: Seconds = DEFAULT_STEP_TIMEOUT
    """Upper bound on each step: one frame read or write, one token/identity/audit hook call."""
    provision_timeout: Seconds = DEFAULT_PROVISION_TIMEOUT
    """Upper bound on the database hook's ``provision`` / ``accept`` call."""
    cleanup_timeout: Seconds = DEFAULT_CLEANUP_TIMEOUT
    """Upper bound on each clean-up step after a failure (runs shielded): writing ``rejected``
    and closing the stream, and the audit batch with the outcome."""
    release_timeout: Seconds = DEFAULT_RELEASE_TIMEOUT
    """Upper bound on releasing what a failed session holds (its reservation, its provision):
    **one** budget for both, so that a stalled store cannot hold a session much past its
    deadline. What it could not release is settled later by the reservation's lease and the
    backend's sweep."""
    max_frame_bytes: Annotated[int, Field(ge=256, le=1024 * 1024)] = DEFAULT_MAX_FRAME_BYTES
    """Largest frame body accepted or sent; a bigger length prefix is ``frame_too_large``."""
    cadre_addrs: Annotated[tuple[MultiaddrStr, ...], Field(max_length=MAX_CADRE_ADDRS)] = ()
    """This party's cadre multiaddrs, sent to the other party after acceptance."""
    audit_level: AuditLevel = DEFAULT_AUDIT_LEVEL
    """``full``: every transition is audited; ``minimal``: the start, rejections, hook errors
    and the outcome, which then carries the session's path of states."""

    @model_validator(mode="after")
    def _steps_fit_session(self) -> _Timeouts:
        for name in ("step_timeout", "provision_timeout"):
            if getattr(self, name) > self.session_timeout:
                raise ValueError(f"{name} must not exceed session_timeout")
        return self


class ManagerConfig(_Timeouts):
    """Everything the inviter's :class:`~taleus_bootstrap.SessionManager` can be tuned with."""

    max_concurrent_sessions: Annotated[int, Field(ge=1, le=100_000)] = (
        DEFAULT_MAX_CONCURRENT_SESSIONS
    )
    """Sessions running at once; a stream over the cap is answered ``busy`` unread. Under
    ``serve --workers N``, the node's cap split between the workers (the first ``cap % N`` get
    one more than ``cap // N``; each at least 1)."""
    busy_retry_after_s: Annotated[float, Field(ge=0, le=3600)] = DEFAULT_BUSY_RETRY_AFTER
    """``retry_after_s`` sent with ``busy``."""
    breaker_failures: Annotated[int, Field(ge=0, le=1_000_000)] = DEFAULT_BREAKER_FAILURES
    """Store hook calls (token, database, audit) failing in a row (raised, or cut by their
    deadline) that open the store breaker: new streams are then answered ``busy`` until a
    probe session's store call returns. 0 turns the breaker off."""
    breaker_open_s: Seconds = DEFAULT_BREAKER_OPEN
    """How long the open breaker refuses before it lets one stream through as a probe (the
    ``retry_after_s`` of its ``busy``)."""
    peer_rate: Annotated[int, Field(ge=1)] = DEFAULT_PEER_RATE
    """Session starts allowed per authenticated peer per ``peer_rate_period`` (GCRA). Under
    ``serve --workers N``, per worker: a peer whose connections land on several workers may
    start up to N times as many."""
    peer_rate_period: Seconds = DEFAULT_PEER_RATE_PERIOD
    """The period ``peer_rate`` is counted over, in seconds."""
    peer_burst: Annotated[int, Field(ge=1)] = DEFAULT_PEER_BURST
    """Session starts a fresh peer may make at once."""
    global_rate_per_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = (
        DEFAULT_GLOBAL_RATE_PER_S
    )
    """Session starts per second across all peers (under ``serve --workers N``, the node's:
    each worker allows 1/N of it)."""
    global_burst: Annotated[int, Field(ge=1)] = DEFAULT_GLOBAL_BURST
    """Session starts the node may take at once (under ``serve --workers N``, split between
    the workers as ``max_concurrent_sessions`` is)."""
    max_tracked_peers: Annotated[int, Field(ge=1, le=10_000_000)] = DEFAULT_MAX_TRACKED_PEERS
    """Bound on the per-peer limiter's memory. Only a peer whose limit has fully recovered is
    forgotten; while every tracked peer is still limited, a new peer id is ``rate_limited``."""
    max_session_history: Annotated[int, Field(ge=0, le=1_000_000)] = DEFAULT_MAX_SESSION_HISTORY
    """Finished sessions kept (with their transitions) for :meth:`SessionManager.history`."""
    cleanup_interval: Seconds = DEFAULT_CLEANUP_INTERVAL
    """How often idle limiter state is pruned."""
    shutdown_grace: Annotated[float, Field(ge=0, le=3600)] = DEFAULT_SHUTDOWN_GRACE
    """On close, how long running sessions may finish before they are cancelled."""
    max_refusals_in_flight: Annotated[int, Field(ge=1, le=1_000_000)] = (
        DEFAULT_MAX_REFUSALS_IN_FLIGHT
    )
    """Refused streams (``busy``, ``rate_limited``, ``shutting_down``) that may linger at once
    (waiting up to 1 s for the peer to read ``rejected`` and end the stream); beyond it a
    refused stream gets its ``rejected`` frame and a half-close, and the peer ends it."""
    refusal_summary_interval: Seconds = DEFAULT_REFUSAL_SUMMARY_INTERVAL
    """How often the refusals of the last window are audited together (one event)."""


class InviteeConfig(_Timeouts):
    """Everything :func:`~taleus_bootstrap.initiate_bootstrap` can be tuned with."""

    dial_timeout: Seconds = DEFAULT_DIAL_TIMEOUT
    """Upper bound on one connect + stream negotiation attempt."""
    dial_attempts: Annotated[int, Field(ge=1, le=20)] = DEFAULT_DIAL_ATTEMPTS
    """Attempts per responder address before moving to the next one."""
    dial_backoff: Annotated[float, Field(ge=0, le=60)] = DEFAULT_DIAL_BACKOFF
    """Wait before the second attempt; doubles each further attempt up to ``dial_backoff_max``."""
    dial_backoff_max: Annotated[float, Field(ge=0, le=600)] = DEFAULT_DIAL_BACKOFF_MAX
    """Cap on the wait between attempts."""
    resolve_timeout: Annotated[float, Field(ge=0, le=86_400)] = DEFAULT_RESOLVE_TIMEOUT
    """How long :func:`~taleus_bootstrap.initiate_bootstrap` keeps asking the inviter about an
    unconfirmed outcome (retrying with backoff) before it returns it unconfirmed; 0: never
    asks (settle it later with :func:`~taleus_bootstrap.resolve_bootstrap`)."""

    @model_validator(mode="after")
    def _backoff_within_cap(self) -> InviteeConfig:
        if self.dial_backoff > self.dial_backoff_max:
            raise ValueError("dial_backoff must not exceed dial_backoff_max")
        return self


Count = Annotated[int, Field(ge=1, le=10_000_000)]


class HostLimits(_Model):
    """Explicit limits of a bootstrap host; libp2p's own defaults are given in parentheses.

    Build a host with them through :func:`~taleus_bootstrap.new_bootstrap_host`.
    """

    model_config = _CONFIG

    max_connections: Count = 1024
    """Established connections, both directions, and the swarm's pool of inbound handlers
    (300, pool 250)."""
    max_connections_per_peer: Count = 1
    """Connections libp2p dials to one peer (3); 1 avoids libp2p's 250 ms happy-eyeballs wait."""
    max_established_per_peer: Count = 4
    """The resource manager's hard cap per peer (8); above 1 so that a client reconnecting
    before the server has reaped its previous connection (~0.2 s) is not refused."""
    max_streams: Count = 8192
    """Concurrent streams over all peers (10 000); more queue."""
    connection_rate_per_peer: Annotated[float, Field(gt=0)] | None = 100.0
    """New connections per second per peer id (10, which refuses a load test from one peer);
    ``None`` disables it. Peer ids are free, so this is no defence against a flood."""
    connection_burst_per_peer: Annotated[float, Field(ge=1)] = 200.0
    """New connections one peer id may open at once (50)."""
    dial_timeout: Seconds = 10.0
    """Bound on the connect of an outbound dial (libp2p applies it only to its auto-connector)."""
    handshake_timeout: Seconds = 10.0
    """Noise + yamux upgrade of a connection (10 s)."""
    negotiation_timeout: Annotated[int, Field(ge=1, le=3600)] = 10
    """multistream-select, whole seconds (libp2p truncates to int and replaces 0 by 30 s)."""
    dial_retries: Annotated[int, Field(ge=0, le=10)] = 0
    """libp2p's own retries of a failed dial (3, about 0.7 s of backoff)."""

    @model_validator(mode="after")
    def _per_peer_fits(self) -> HostLimits:
        if self.max_established_per_peer < self.max_connections_per_peer:
            raise ValueError("max_established_per_peer must be >= max_connections_per_peer")
        return self
