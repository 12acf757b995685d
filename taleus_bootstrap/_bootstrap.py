"""The invitee's entry points: :func:`run_invitee` over any byte stream, and
:func:`initiate_bootstrap`, which dials a link's inviter over libp2p first.

Both run an :class:`~taleus_bootstrap.InviteeProtocol` with the :class:`~._engine.Engine`; the
libp2p dialing (addresses in order, bounded attempts with backoff) is a thin adapter,
:func:`~._libp2p.dial_bootstrap_stream`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import trio
from libp2p.abc import IHost
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider
from pydantic import JsonValue

from ._channel import ByteStream
from ._config import InviteeConfig
from ._engine import Dialer, Engine, utc_now
from ._errors import BootstrapError, LinkExpiredError, RejectionCode
from ._hooks import InviteeHooks, batched_audit
from ._invitee import BootstrapResult, InviteeProtocol
from ._libp2p import as_byte_stream, check_noise_only, dial_bootstrap_stream
from ._link import BootstrapLink
from ._telemetry import telemetry_for

__all__ = ["initiate_bootstrap", "run_invitee"]


async def run_invitee(
    stream: object,
    link: BootstrapLink | str,
    *,
    hooks: InviteeHooks,
    local_peer_id: str,
    remote_peer_id: str,
    identity: Mapping[str, JsonValue] | None = None,
    cadre_addrs: Sequence[str] = (),
    config: InviteeConfig | None = None,
    responder_addr: str = "",
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> BootstrapResult:
    """Run the invitee's side of a bootstrap over an open ``stream`` to the inviter.

    ``remote_peer_id`` is the peer the stream's secure channel authenticated (it must be the
    link's); ``local_peer_id`` this side's. Otherwise as :func:`initiate_bootstrap`, whose
    dialing this skips: a py-libp2p stream, or any
    :class:`~taleus_bootstrap.testing.MemoryByteStream`-like byte stream.
    """
    byte_stream = as_byte_stream(stream)

    async def given() -> tuple[ByteStream, str, str]:
        return byte_stream, remote_peer_id, responder_addr

    return await _run(
        _decode(link),
        given,
        hooks=hooks,
        local_peer_id=local_peer_id,
        identity=identity,
        cadre_addrs=cadre_addrs,
        config=config or InviteeConfig(),
        meter_provider=meter_provider,
        tracer_provider=tracer_provider,
    )


async def initiate_bootstrap(
    link: BootstrapLink | str,
    host: IHost,
    *,
    hooks: InviteeHooks,
    identity: Mapping[str, JsonValue] | None = None,
    cadre_addrs: Sequence[str] = (),
    config: InviteeConfig | None = None,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    allow_insecure_host: bool = False,
) -> BootstrapResult:
    """Run the invitee's side of a bootstrap over ``host`` and return the tally formed.

    ``host`` must be Noise-only (as :func:`~taleus_bootstrap.new_bootstrap_host` builds it),
    else :class:`InsecureHostError` is raised before anything else, unless
    ``allow_insecure_host`` (tests). Refuses an expired link, and a link whose inviter is this
    node itself, before dialing; tries each responder address in order (bounded attempts with
    backoff), then runs the exchange (:func:`run_invitee`). Metrics and a span of the session
    go to ``meter_provider`` / ``tracer_provider`` (default: the global OpenTelemetry
    providers, no-ops until an application installs the SDK).

    Raises :class:`InsecureHostError`, :class:`LinkExpiredError` (before dialing),
    :class:`BootstrapUnreachable`, :class:`BootstrapRejected`, :class:`BootstrapTimeout`,
    :class:`BootstrapProtocolError`, :class:`BootstrapProvisionError` or
    :class:`BootstrapError` (``identity_rejected`` for a link of this node's own).
    """
    if not allow_insecure_host:
        check_noise_only(host)
    decoded = _decode(link)
    config = config or InviteeConfig()
    return await _run(
        decoded,
        lambda: dial_bootstrap_stream(host, decoded.responder_addrs, config),
        hooks=hooks,
        local_peer_id=host.get_id().to_base58(),
        identity=identity,
        cadre_addrs=cadre_addrs,
        config=config,
        meter_provider=meter_provider,
        tracer_provider=tracer_provider,
    )


def _decode(link: BootstrapLink | str) -> BootstrapLink:
    decoded = BootstrapLink.decode(link) if isinstance(link, str) else link
    if decoded.is_expired(utc_now()):
        raise LinkExpiredError("the link has expired")
    return decoded


async def _run(
    link: BootstrapLink,
    dial: Dialer,
    *,
    hooks: InviteeHooks,
    local_peer_id: str,
    identity: Mapping[str, JsonValue] | None,
    cadre_addrs: Sequence[str],
    config: InviteeConfig,
    meter_provider: MeterProvider | None,
    tracer_provider: TracerProvider | None,
) -> BootstrapResult:
    telemetry = telemetry_for(meter_provider, tracer_provider)
    hooks = telemetry.instrument(replace(hooks, audit=batched_audit(hooks.audit)), "invitee")
    protocol = InviteeProtocol(
        link,
        local_peer_id=local_peer_id,
        identity=identity,
        cadre_addrs=cadre_addrs,
        config=config,
        clock=trio.lowlevel.current_clock().current_time,
        wall_clock=utc_now,
    )
    engine = Engine(protocol, hooks, dial=dial)
    span = telemetry.start_session("invitee", link.inviter_peer_id)
    code: str | None = None
    try:
        with telemetry.activate(span):
            await engine.run()
        if protocol.result is None:
            error = protocol.exception()
            code = (error.code or RejectionCode.INTERNAL_ERROR).value
            raise error
        return protocol.outcome()
    except BaseException as exc:
        if code is None and not isinstance(exc, BootstrapError):
            code = RejectionCode.INTERNAL_ERROR.value  # cancelled from outside
        raise
    finally:
        result = protocol.result
        telemetry.finish_session(
            span,
            side="invitee",
            session_id=protocol.remote_session_id or protocol.session_id,
            final_state=protocol.state.value,
            role=link.invitee_role,
            code=None if result is not None else code,
            tally_id=result.tally.tally_id if result is not None else None,
            duration_s=max(0.0, trio.current_time() - protocol.started),
            transitions=protocol.transitions,
            audit_wait_s=engine.audit_seconds,
        )
