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
from ._errors import BootstrapError, BootstrapReleased, LinkExpiredError, RejectionCode
from ._hooks import InviteeHooks, batched_audit
from ._invitee import BootstrapResult, InviteeProtocol
from ._libp2p import (
    RESOLVE_PROTOCOL_ID,
    as_byte_stream,
    check_noise_only,
    dial_bootstrap_stream,
)
from ._link import BootstrapLink
from ._settle import settle_unconfirmed
from ._telemetry import telemetry_for

__all__ = ["initiate_bootstrap", "resolve_bootstrap", "run_invitee"]


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
    try:
        result = await _run(
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
    except BootstrapError as exc:
        if exc.unconfirmed is None or config.resolve_timeout == 0:
            raise
        try:  # in doubt: the inviter may have formed it (see BootstrapError.unconfirmed)
            settled = await resolve_bootstrap(
                exc.unconfirmed,
                host,
                hooks=hooks,
                config=config,
                addrs=decoded.responder_addrs,
                allow_insecure_host=True,  # checked above
            )
        except BootstrapReleased as released:
            raise released from exc
        if settled.confirmed:
            return settled
        raise
    if result.confirmed or config.resolve_timeout == 0:
        return result
    return await resolve_bootstrap(
        result,
        host,
        hooks=hooks,
        config=config,
        addrs=decoded.responder_addrs,
        allow_insecure_host=True,  # checked above
    )


async def resolve_bootstrap(
    result: BootstrapResult,
    host: IHost,
    *,
    hooks: InviteeHooks,
    config: InviteeConfig | None = None,
    addrs: Sequence[str] = (),
    allow_insecure_host: bool = False,
) -> BootstrapResult:
    """Settle an unconfirmed ``result`` by asking its inviter over ``host`` what it recorded
    (``/taleus/bootstrap-resolve/1.0.0``, protocol section 14), retrying with backoff for up to
    ``config.resolve_timeout``; ``initiate_bootstrap`` does this itself before returning.

    Returns the result confirmed once the inviter answers ``committed`` (the tally is committed
    through ``hooks.database``); raises :class:`BootstrapReleased` once it answers that it did
    not record the session (the tally is released); returns it still unconfirmed, with nothing
    changed, if no answer came in time (call again later). The inviter is dialed at the address
    that answered the bootstrap, then at ``addrs`` (the link's). ``host`` is checked as by
    :func:`initiate_bootstrap`.
    """
    if not allow_insecure_host:
        check_noise_only(host)
    config = config or InviteeConfig()
    targets = list(dict.fromkeys([result.responder_addr, *addrs]))

    async def open_stream() -> ByteStream:
        stream, _, _ = await dial_bootstrap_stream(
            host, targets, config, protocol_id=RESOLVE_PROTOCOL_ID
        )
        return stream

    return await settle_unconfirmed(result, open_stream, hooks=hooks, config=config)


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
