"""Every py-libp2p (0.8.1) workaround of taleus_bootstrap, in this one package.

Defect numbers refer to LIBP2P-NOTES.md; each workaround has a regression test in
tests/test_libp2p_integration.py. 1: inbound connections keep a swarm slot until the swarm stops
(:class:`_BootstrapSwarm`). 2: a raising stream handler kills the host
(:func:`set_guarded_stream_handler`); removing a handler races multiselect's negotiations in
flight (:func:`retire_stream_handler`). 3: plaintext accepted (hosts are Noise-only, and a host
built elsewhere is refused unless it is: :func:`check_noise_only`). 4: 250 ms
``connect()`` (``max_connections_per_peer=1``). 5: ``host.run()`` leaves connections and the
listener open (:func:`running_host`). 6: the auto-connector re-dials (disabled). 7: logging
(:func:`route_libp2p_logging`). 8 (found here, not in the notes): a reset stream and a dead
connection (the peer killed) read as an end of stream, like a half-close
(:meth:`Libp2pByteStream.ended_in_order`). Also: the negative dial cache and stale peerstore
addresses (:func:`open_bootstrap_stream`), ``SO_REUSEPORT`` listeners that silently share a
fixed port with another process (:func:`running_host` refuses a port in use, unless asked to
share it with the other workers of ``serve --workers``: :func:`check_shared_listeners`), and
libp2p's stream exceptions, which are mapped to the package's own here and nowhere else
(:class:`Libp2pByteStream`: end of stream is ``b""``, a broken stream
:class:`~taleus_bootstrap._channel.StreamBroken`).

The transport's cost per bootstrap (issue 17) is cut in two submodules the host factory installs:
:mod:`._yamux` (buffered TCP reads, go-yamux window crediting, SYN on the first DATA frame, the
bytes a peer sent before its connection closed, the frame write) and :mod:`._select`
(multistream-select in one write each way); their regression tests are in
tests/test_transport_frames.py.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, Final

import trio
from libp2p.abc import IHost, IMuxedConn, INetStream, IRawConnection
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.host.basic_host import BasicHost
from libp2p.io.abc import ReadWriteCloser
from libp2p.metrics.swarm import SwarmEvent
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.exceptions import SwarmException
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.peer.peerstore import PeerStore
from libp2p.protocol_muxer.exceptions import MultiselectClientError
from libp2p.rcmgr import ResourceLimits, ResourceManager
from libp2p.rcmgr.connection_limits import ConnectionLimits
from libp2p.security.noise.exceptions import PeerIDMismatchesPubkey
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.transport.exceptions import SecurityUpgradeFailure
from libp2p.transport.tcp.tcp import TCP
from libp2p.transport.upgrader import TransportUpgrader
from multiaddr import Multiaddr

from .._channel import ByteStream, StreamBroken
from .._config import HostLimits, InviteeConfig
from .._errors import BootstrapUnreachable, InsecureHostError
from ._select import _select_in_one_round_trip
from ._yamux import (  # noqa: F401 - the tests and benchmarks import them from here
    TRANSPORT_OFF_ENV,
    _BatchedWindowStream,
    _BootstrapMuxerMultistream,
    _BootstrapYamux,
    _buffer_reads,
    _DrainedStream,
    _ReadBuffered,
    _SynWithDataStream,
    _transport_off,
)

PROTOCOL_ID: Final = TProtocol("/taleus/bootstrap/2.0.0")
RESOLVE_PROTOCOL_ID: Final = TProtocol("/taleus/bootstrap-resolve/1.0.0")
"""The sibling protocol an invitee resolves an unconfirmed outcome on (protocol section 14)."""

StreamHandler = Callable[[INetStream], Awaitable[None]]

logger = logging.getLogger("taleus_bootstrap.libp2p")

#: Errors that closing or resetting a stream may raise once the peer or connection is gone.
_STREAM_ERRORS = (BaseLibp2pError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class _DisabledAutoConnector(AutoConnector):
    """Defect 6: an auto-connector that never dials (libp2p has no switch for it)."""

    async def start(self) -> None:
        self._started = False

    async def run_background_task(self, nursery: trio.Nursery) -> None:
        return

    async def maybe_connect(self) -> None:
        return


#: The nursery of the inbound-connection handler running in the current task (defect 1).
_INBOUND_HANDLER: ContextVar[trio.Nursery | None] = ContextVar("_INBOUND_HANDLER", default=None)


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


class _BootstrapSwarm(Swarm):
    """Swarm with the fixes for defects 1 and 6; keeps the limits of its host."""

    bootstrap_limits: HostLimits = HostLimits()

    def _init_connection_management(self) -> None:
        super()._init_connection_management()
        self.auto_connector = _DisabledAutoConnector(
            swarm=self, auto_connect_interval=self.connection_config.auto_connect_interval
        )

    async def _do_handle_inbound_connection(
        self, read_write_closer: ReadWriteCloser, maddr: Multiaddr, failure_event: SwarmEvent
    ) -> None:
        # libp2p parks this handler (and its ``_inbound_limiter`` slot) on the swarm's lifetime
        # once the connection is upgraded. Run it in a nursery that ``upgrade_inbound_raw_conn``
        # below cancels when the muxed connection closes.
        async with trio.open_nursery() as nursery:
            token = _INBOUND_HANDLER.set(nursery)
            try:
                await super()._do_handle_inbound_connection(read_write_closer, maddr, failure_event)
            finally:
                _INBOUND_HANDLER.reset(token)
                nursery.cancel_scope.cancel()

    async def upgrade_outbound_raw_conn(
        self, raw_conn: IRawConnection, peer_id: ID, pre_scope: Any = None
    ) -> SwarmConn:
        _buffer_reads(raw_conn)
        return await super().upgrade_outbound_raw_conn(raw_conn, peer_id, pre_scope)

    async def upgrade_inbound_raw_conn(
        self, raw_conn: IRawConnection, maddr: Multiaddr
    ) -> IMuxedConn:
        _buffer_reads(raw_conn)
        muxed_conn = await super().upgrade_inbound_raw_conn(raw_conn, maddr)
        nursery = _INBOUND_HANDLER.get()
        closed = getattr(muxed_conn, "event_closed", None)  # yamux and mplex have it
        if nursery is not None and isinstance(closed, trio.Event):
            nursery.start_soon(_cancel_when_set, closed, nursery.cancel_scope)
        return muxed_conn


_LIBP2P_ROUTED = False


def route_libp2p_logging(level: int = logging.WARNING) -> None:
    """Defect 7: make libp2p's records flow into standard logging at ``level``. Idempotent:
    the level is set by the first call only (each host built calls this; an application that
    called it first with another level keeps it).

    ``import libp2p`` sets ``propagate=False`` and no handler on ``libp2p`` (records reach only
    ``logging.lastResort``) and the auto-connector forces INFO on itself. Does nothing when
    ``LIBP2P_DEBUG`` is set: that is a developer's request for libp2p's own log handlers.
    """
    global _LIBP2P_ROUTED
    if os.environ.get("LIBP2P_DEBUG"):
        return
    root = logging.getLogger("libp2p")
    if not _LIBP2P_ROUTED:
        root.setLevel(level)
        _LIBP2P_ROUTED = True
    root.propagate = True
    logging.getLogger("libp2p.network.auto_connector").setLevel(logging.NOTSET)


def new_bootstrap_host(
    *, key_pair: KeyPair | None = None, limits: HostLimits | None = None
) -> IHost:
    """Build a TCP host (peer id from ``key_pair``, else a new Ed25519 key) with the fixes.

    Noise-only (defect 3), yamux-only, connection config and resource manager from ``limits``
    (defect 4), inbound slots released on close (defect 1), no auto-connector (defect 6),
    libp2p logging routed (defect 7).
    """
    route_libp2p_logging()
    limits = limits or HostLimits()
    key_pair = key_pair or create_new_key_pair()
    peer_id = ID.from_pubkey(key_pair.public_key)
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    upgrader = TransportUpgrader(
        secure_transports_by_protocol={NOISE_PROTOCOL_ID: noise},
        muxer_transports_by_protocol={TProtocol(YAMUX_PROTOCOL_ID): _BootstrapYamux},
        negotiate_timeout=limits.negotiation_timeout,
    )
    upgrader.muxer_multistream = _BootstrapMuxerMultistream(
        {TProtocol(YAMUX_PROTOCOL_ID): _BootstrapYamux}, limits.negotiation_timeout
    )
    peerstore = PeerStore()
    peerstore.add_key_pair(peer_id, key_pair)
    config = ConnectionConfig(
        max_connections=limits.max_connections,
        min_connections=0,  # the inbound pool is max_connections - min_connections
        low_watermark=0,
        high_watermark=limits.max_connections,  # the pruner never fires
        max_connections_per_peer=limits.max_connections_per_peer,
        dial_timeout=limits.dial_timeout,
        inbound_upgrade_timeout=limits.handshake_timeout,
        outbound_upgrade_timeout=limits.handshake_timeout,
        inbound_stream_protocol_negotiation_timeout=float(limits.negotiation_timeout),
        outbound_stream_protocol_negotiation_timeout=float(limits.negotiation_timeout),
    )
    swarm = _BootstrapSwarm(
        peer_id,
        peerstore,
        upgrader,
        transports=[TCP()],
        retry_config=RetryConfig(max_retries=limits.dial_retries),
        connection_config=config,
    )
    swarm.bootstrap_limits = limits
    rate = limits.connection_rate_per_peer
    rm = ResourceManager(
        # The swarm enforces max_connections itself; the manager also counts connections in
        # their handshake, so give it room for a full inbound pool on top.
        limits=ResourceLimits(
            max_connections=2 * limits.max_connections, max_streams=limits.max_streams
        ),
        connection_limits=ConnectionLimits(
            max_established_inbound=limits.max_connections,
            max_established_outbound=limits.max_connections,
            max_established_total=limits.max_connections,
            max_established_per_peer=limits.max_established_per_peer,
        ),
        enable_circuit_breaker=False,  # adaptive behaviour would make the limits above vague
        enable_graceful_degradation=False,
        enable_rate_limiting=rate is not None,
        connections_per_peer_per_sec=rate or 1.0,
        burst_connections_per_peer=limits.connection_burst_per_peer,
    )
    host = BasicHost(swarm, negotiate_timeout=limits.negotiation_timeout, resource_manager=rm)
    _select_in_one_round_trip(host, upgrader)
    return host


def check_noise_only(host: IHost) -> None:
    """Defect 3 for a host built elsewhere: raise :class:`~taleus_bootstrap.InsecureHostError`
    unless every security protocol ``host`` negotiates is Noise.

    Under any other (``/plaintext/2.0.0`` above all, which py-libp2p's ``new_host()`` offers) a
    peer may claim any peer id, and every identity check of the protocol would mean nothing.
    A host whose security protocols cannot be read (not a py-libp2p swarm) is refused too.
    """
    upgrader = getattr(host.get_network(), "upgrader", None)
    transports = getattr(getattr(upgrader, "security_multistream", None), "transports", None)
    if transports is None:
        offered = "cannot read its security protocols"
    else:
        others = [
            str(protocol)
            for protocol, transport in transports.items()
            if protocol != NOISE_PROTOCOL_ID or not isinstance(transport, NoiseTransport)
        ]
        if transports and not others:
            return
        offered = f"offers {', '.join(others)}" if others else "offers no security protocol"
    raise InsecureHostError(
        f"the libp2p host must be Noise-only but {offered}: a peer could claim any peer id."
        " Build the host with new_bootstrap_host(), or pass allow_insecure_host=True (tests only)"
    )


def _host_limits(host: IHost) -> HostLimits:
    limits = getattr(host.get_network(), "bootstrap_limits", None)
    return limits if isinstance(limits, HostLimits) else HostLimits()


async def disconnect_all_peers(host: IHost, *, time_limit: float = 2.0) -> None:
    """Close every connection of ``host`` in parallel, giving up after ``time_limit`` seconds.

    Each libp2p disconnect takes ~0.2 s (two fixed sleeps). Errors are logged, not raised.
    """

    async def disconnect(peer: ID) -> None:
        try:
            await host.disconnect(peer)
        except Exception:  # best effort during shutdown
            logger.warning("disconnecting %s failed", peer, exc_info=True)

    with trio.move_on_after(time_limit):
        async with trio.open_nursery() as nursery:
            for peer in host.get_connected_peers():
                nursery.start_soon(disconnect, peer)


async def _stop_listening(host: IHost) -> None:
    for listener in list(host.get_network().listeners.values()):
        try:
            await listener.close()
        except Exception:  # best effort during shutdown
            logger.warning("closing listener failed", exc_info=True)


@asynccontextmanager
async def running_host(
    host: IHost,
    listen_addrs: Sequence[str | Multiaddr] = ("/ip4/127.0.0.1/tcp/0",),
    *,
    shared: bool = False,
) -> AsyncIterator[IHost]:
    """Run ``host`` listening on ``listen_addrs``; on exit stop listening and disconnect.

    Defect 5: leaving ``host.run()`` leaves the peers' connections open (zombies on the remote
    side) and even the listening socket, which keeps accepting and handshaking. So on exit
    (normal, exception or cancellation; shielded, bounded to ~3 s) the listeners are closed and
    every peer is disconnected in parallel before the host stops. An ``Exception`` from the
    block is re-raised as is, not wrapped in the ExceptionGroups of libp2p's nurseries.
    Raises ``SwarmException`` if an address cannot be listened on (libp2p ignores that).
    libp2p listens with ``SO_REUSEPORT``, so a second process would silently share a fixed port
    with the first: a port some socket already holds is refused first (:func:`_check_port_free`)
    unless ``shared`` (see :func:`check_shared_listeners`).
    """
    addrs = [Multiaddr(a) if isinstance(a, str) else a for a in listen_addrs]
    if not shared:
        for addr in addrs:
            _check_port_free(addr)
    failure: Exception | None = None
    async with host.run(addrs):
        try:
            if len(host.get_network().listeners) < len(addrs):
                raise SwarmException(f"could not listen on all of {[str(a) for a in addrs]}")
            if shared:
                check_shared_listeners(host)
            yield host
        except Exception as exc:
            failure = exc
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1.0):
                    await _stop_listening(host)
                await disconnect_all_peers(host)
    if failure is not None:
        raise failure


def _check_port_free(addr: Multiaddr) -> None:
    """Refuse a fixed TCP port that a socket already holds (libp2p would share it).

    The probe binds without ``SO_REUSEPORT`` (with ``SO_REUSEADDR``, so a port whose old
    connections are in TIME_WAIT still counts as free), which fails while any socket listens.
    """
    protocols = {p.name for p in addr.protocols()}
    if "tcp" not in protocols or not protocols & {"ip4", "ip6"}:
        return
    port = int(addr.value_for_protocol("tcp"))
    if port == 0:
        return
    family, ip = (
        (socket.AF_INET6, addr.value_for_protocol("ip6"))
        if "ip6" in protocols
        else (socket.AF_INET, addr.value_for_protocol("ip4"))
    )
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError as exc:
            raise SwarmException(f"cannot listen on {addr}: {exc.strerror or exc}") from None


def check_shared_listeners(host: IHost) -> None:
    """``serve --workers``: several processes listen on one TCP port, and the kernel spreads
    the incoming connections over them. That needs ``SO_REUSEPORT`` on every listening socket
    (sockets of one user only, on Linux). py-libp2p 0.8.1's TCP transport sets it (for hole
    punching); ``running_host(..., shared=True)`` skips the free-port check and calls this, so
    that a transport that stops setting it fails at start, naming the socket, instead of making
    the second worker's bind fail with a bare ``address in use``."""
    socks = [s for lis in host.get_network().listeners.values() for s in _listener_sockets(lis)]
    if not socks:
        raise SwarmException("cannot find the listening sockets to share (py-libp2p changed?)")
    for sock in socks:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            raise SwarmException(
                f"listening socket {sock.getsockname()} lacks SO_REUSEPORT: it cannot be "
                "shared by several workers"
            )


def _listener_sockets(listener: object) -> list[socket.socket]:
    """The stdlib sockets under a py-libp2p TCP listener (its trio listeners' ``socket``)."""
    found = []
    for trio_listener in getattr(listener, "listeners", ()) or ():
        sock = getattr(trio_listener, "socket", None)
        if sock is not None and hasattr(sock, "getsockopt"):
            found.append(sock)
    return found


def host_multiaddrs(host: IHost) -> list[str]:
    """The listen multiaddrs of a running ``host``, each ending in ``/p2p/<peer id>``."""
    suffix = f"/p2p/{host.get_id().to_base58()}"
    return [f"{addr}{suffix}" for addr in host.get_transport_addrs()]


def remote_peer_id(stream: INetStream | Libp2pByteStream) -> str:
    """Base58 peer id of the other end of ``stream`` (authenticated: our hosts are Noise-only)."""
    if isinstance(stream, Libp2pByteStream):
        stream = stream.inner
    return stream.muxed_conn.peer_id.to_base58()


class Libp2pByteStream:
    """A py-libp2p stream as a :class:`~taleus_bootstrap._channel.ByteStream`.

    The one place libp2p's stream exceptions are translated: ``StreamEOF`` on read is the end
    of stream (``b""``); ``StreamReset``, ``StreamClosed``, any other ``BaseLibp2pError`` and the
    socket errors beneath them become :class:`~taleus_bootstrap._channel.StreamBroken`. Anything
    else (a bug) propagates as it is.
    """

    __slots__ = ("inner",)

    def __init__(self, stream: INetStream) -> None:
        self.inner = stream

    async def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes; ``b""`` at end of stream."""
        try:
            return await self.inner.read(n)
        except StreamEOF:
            return b""
        except _STREAM_ERRORS as exc:
            raise StreamBroken(f"read: {type(exc).__name__}") from None

    def ended_in_order(self) -> bool:
        """After :meth:`read` returned ``b""``: whether that end was the peer's half-close on a
        live connection. py-libp2p reports a reset stream and a dead connection (the peer's
        process killed) as an end of stream too (defect 8): the yamux stream's
        ``reset_received`` and the connection's shutdown tell them apart. Unsure is False."""
        muxed = getattr(self.inner, "muxed_stream", None)
        conn = getattr(muxed, "conn", None)
        if muxed is None or conn is None or getattr(muxed, "reset_received", True):
            return False
        shutting_down = getattr(conn, "event_shutting_down", None)
        return shutting_down is not None and not shutting_down.is_set()

    async def write(self, data: bytes) -> None:
        """Write all of ``data``."""
        try:
            await self.inner.write(data)
        except _STREAM_ERRORS as exc:
            raise StreamBroken(f"write: {type(exc).__name__}") from None

    async def close(self) -> None:
        """Half-close."""
        try:
            await self.inner.close()
        except _STREAM_ERRORS as exc:
            raise StreamBroken(f"close: {type(exc).__name__}") from None

    async def reset(self) -> None:
        """Reset both directions."""
        try:
            await self.inner.reset()
        except _STREAM_ERRORS as exc:
            raise StreamBroken(f"reset: {type(exc).__name__}") from None


def as_byte_stream(stream: object) -> ByteStream:
    """``stream`` as a :class:`~taleus_bootstrap._channel.ByteStream`: a py-libp2p stream is
    wrapped in :class:`Libp2pByteStream`; anything else is taken to be one already."""
    if isinstance(stream, INetStream):
        return Libp2pByteStream(stream)
    return stream  # type: ignore[return-value]


async def reset_stream(stream: INetStream) -> None:
    """Reset ``stream`` (both directions), ignoring errors of an already broken stream."""
    try:
        await stream.reset()
    except _STREAM_ERRORS:
        logger.debug("reset of a broken stream failed", exc_info=True)


async def close_stream(stream: INetStream) -> None:
    """Half-close ``stream`` (we send no more; the peer can still reply), ignoring errors."""
    try:
        await stream.close()
    except _STREAM_ERRORS:
        logger.debug("close of a broken stream failed", exc_info=True)


def set_guarded_stream_handler(
    host: IHost,
    protocol_id: TProtocol,
    handler: StreamHandler,
    *,
    on_error: Callable[[INetStream, Exception], None] | None = None,
) -> None:
    """Register ``handler`` for ``protocol_id`` behind an error boundary (defect 2).

    An ``Exception`` escaping ``handler`` would stop the whole host. The boundary logs it at
    ERROR on ``taleus_bootstrap.libp2p``, calls ``on_error(stream, exc)`` (whose own exceptions
    are logged and dropped) and resets the stream. Cancellation and other ``BaseException``s
    pass through. When ``handler`` returns, the stream is closed (a no-op if it already was),
    since a peer would otherwise wait forever for the end of the stream.
    """

    async def guarded(stream: INetStream) -> None:
        try:
            await handler(stream)
        except Exception as exc:
            peer = remote_peer_id(stream)
            logger.error("handler of %s failed for peer %s", protocol_id, peer, exc_info=exc)
            if on_error is not None:
                try:
                    on_error(stream, exc)
                except Exception:
                    logger.exception("on_error callback of %s failed", protocol_id)
            await reset_stream(stream)
        else:
            await close_stream(stream)

    host.set_stream_handler(protocol_id, guarded)


def retire_stream_handler(host: IHost, protocol_id: TProtocol) -> None:
    """Stop serving ``protocol_id``: streams that still select it are reset.

    Not ``host.remove_stream_handler``: multiselect checks that the protocol is in its table,
    awaits its echo to the peer, then looks the handler up again, so a handler removed in
    between raises ``KeyError`` out of the connection's task and stops the host (``serve``
    interrupted under load exited 1 without draining). The protocol stays in the table, with a
    handler that resets the stream.
    """
    host.set_stream_handler(protocol_id, reset_stream)


async def open_bootstrap_stream(
    host: IHost, addr: str | Multiaddr, *, protocol_id: TProtocol = PROTOCOL_ID
) -> INetStream:
    """Connect to ``addr`` (a multiaddr ending in ``/p2p/<peer id>``) and open a stream.

    Unless already connected, ``addr`` replaces the peer's addresses in the peerstore (libp2p
    dials only one TCP address per peer, so a stale one would be dialled forever) and the peer
    leaves libp2p's 60 s negative dial cache (an explicit request always dials); the connection
    must be up within the host's ``dial_timeout``. Raises ``ValueError`` for a malformed address
    and a ``BaseLibp2pError`` (e.g. ``SwarmException``, ``StreamFailure``) when the peer cannot
    be reached, cannot be authenticated or does not speak ``protocol_id``.
    """
    info = info_from_p2p_addr(Multiaddr(addr) if isinstance(addr, str) else addr)
    if info.peer_id not in host.get_connected_peers():
        host.get_peerstore().clear_addrs(info.peer_id)
        unblock = getattr(host.get_network(), "unblock_peer", None)
        if callable(unblock):
            unblock(info.peer_id)
    timeout = _host_limits(host).dial_timeout
    with trio.move_on_after(timeout) as scope:
        await host.connect(info)
    if scope.cancelled_caught:
        raise DialTimeout(f"dialing {info.peer_id} took more than {timeout:g} s")
    return await host.new_stream(info.peer_id, [protocol_id])


async def dial_bootstrap_stream(
    host: IHost,
    addrs: Sequence[str],
    config: InviteeConfig,
    *,
    protocol_id: TProtocol = PROTOCOL_ID,
) -> tuple[Libp2pByteStream, str, str]:
    """Open a bootstrap stream to the first of ``addrs`` that answers: each tried in order,
    ``dial_attempts`` times with a doubling backoff, each attempt within ``dial_timeout``.

    Returns the stream, its authenticated remote peer id and the address that answered; raises
    :class:`~taleus_bootstrap.BootstrapUnreachable` (with every attempt's cause) when none did.
    """
    attempts: list[tuple[str, str]] = []
    for addr in addrs:
        delay = config.dial_backoff
        for attempt in range(config.dial_attempts):
            if attempt:
                await trio.sleep(delay)
                delay = min(delay * 2, config.dial_backoff_max)
            with trio.move_on_after(config.dial_timeout) as scope:
                try:
                    stream = await open_bootstrap_stream(host, addr, protocol_id=protocol_id)
                except Exception as exc:  # libp2p raises many unrelated types here
                    cause = dial_failure_cause(exc, protocol_id)
                    logger.debug("dialing %s failed: %s", addr, cause, exc_info=exc)
                    attempts.append((addr, cause))
                    continue
                return Libp2pByteStream(stream), remote_peer_id(stream), addr
            if scope.cancelled_caught:
                logger.debug("dialing %s timed out after %g s", addr, config.dial_timeout)
                attempts.append((addr, f"timed out after {config.dial_timeout:g} s"))
    count = f"{len(addrs)} address" if len(addrs) == 1 else f"any of {len(addrs)} addresses"
    raise BootstrapUnreachable(f"could not reach the inviter at {count}", tuple(attempts))


class DialTimeout(SwarmException):
    """The connection was not up within the host's ``dial_timeout``."""


_MISMATCH: Final = re.compile(r"remote_peer_id_from_pubkey=(\w+)")
_ERRNO_CAUSES: Final = {
    errno.ECONNREFUSED: "connection refused (nothing listens there: is the node running?)",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ECONNRESET: "connection reset by the peer",
    errno.EADDRNOTAVAIL: "address not available",
}


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and every exception beneath it: causes, contexts, and the members of
    exception groups and of libp2p's ``MultiError``, outermost first."""
    found: list[BaseException] = []
    pending = [error]
    while pending:
        current = pending.pop(0)
        if any(current is seen for seen in found):
            continue
        found.append(current)
        members = getattr(current, "exceptions", None) or getattr(current, "errors", None)
        if isinstance(members, (list, tuple)):
            pending.extend(m for m in members if isinstance(m, BaseException))
        if current.__cause__ is not None:
            pending.append(current.__cause__)
        elif current.__context__ is not None and not current.__suppress_context__:
            pending.append(current.__context__)
    return found


def dial_failure_cause(error: BaseException, protocol_id: str = PROTOCOL_ID) -> str:
    """A short cause of a failed dial, in words (``connection refused ...``, ``wrong peer id
    ...``, ``timed out ...``), found in the causes py-libp2p chains beneath its
    ``SwarmDialAllFailedError``; the innermost message when none is recognised."""
    chain = _chain(error)
    for exc in chain:
        text = str(exc)
        if isinstance(exc, PeerIDMismatchesPubkey) or "peer id does not correspond" in text:
            found = _MISMATCH.search(text)
            actual = f": the node there is {found.group(1)}" if found else ""
            return f"wrong peer id (the link's peer id does not match the node there{actual})"
    for exc in chain:
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve the host name ({exc.strerror or exc})"
        if isinstance(exc, OSError) and exc.errno is not None:
            return _ERRNO_CAUSES.get(exc.errno) or str(exc.strerror or exc)
    for exc in chain:
        if isinstance(exc, DialTimeout):
            return f"timed out ({exc})"
        if isinstance(exc, (TimeoutError, trio.TooSlowError)):
            return "timed out"
        if ("resolve" in str(exc) and "DNS" in str(exc)) or "resolved address" in str(exc):
            return "cannot resolve the host name"
        if isinstance(exc, MultiselectClientError) and "not supported" in str(exc):
            return f"the node does not serve {protocol_id} (not a taleus-bootstrap node?)"
        if isinstance(exc, SecurityUpgradeFailure):
            return "security handshake failed (not a libp2p node, or one without Noise?)"
    leaf = chain[-1]
    return f"{type(leaf).__name__}: {leaf}"[:300]
