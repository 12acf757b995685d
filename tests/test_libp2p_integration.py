"""Regression tests of the py-libp2p workarounds in ``taleus_bootstrap._libp2p``.

Real hosts on 127.0.0.1. Each test fails if its workaround is removed; the "control" assertions
fail if libp2p itself changes the defect (then revisit the workaround).
"""

from __future__ import annotations

import logging
import re
import socket
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF, StreamReset
from libp2p.network.swarm import Swarm
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.utils import encode_varint_prefixed, read_varint_prefixed_bytes_limited
from multiaddr import Multiaddr
from taleus_hooks.memory import MemoryBackend

from taleus_bootstrap import (
    InsecureHostError,
    SessionManager,
    initiate_bootstrap,
    mint_link,
    open_session_manager,
)
from taleus_bootstrap._channel import StreamBroken
from taleus_bootstrap._libp2p import (
    PROTOCOL_ID,
    HostLimits,
    Libp2pByteStream,
    _stop_listening,
    check_shared_listeners,
    close_stream,
    host_multiaddrs,
    new_bootstrap_host,
    open_bootstrap_stream,
    remote_peer_id,
    reset_stream,
    retire_stream_handler,
    route_libp2p_logging,
    running_host,
    set_guarded_stream_handler,
)

pytestmark = pytest.mark.libp2p

PLAINTEXT = re.escape(PLAINTEXT_PROTOCOL_ID)
PEER = "12D3KooWDSzhRqU2agPZGfN42irroipZotydBWxLhLoJP9ATU7dq"  # a syntactically valid peer id

ECHO = TProtocol("/taleus/test/echo/1.0.0")
BOOM = TProtocol("/taleus/test/boom/1.0.0")


async def echo(stream: INetStream) -> None:
    await stream.write(await stream.read(1024))


async def roundtrip(host: IHost, addr: str, payload: bytes = b"ping") -> None:
    stream = await open_bootstrap_stream(host, addr, protocol_id=ECHO)
    await stream.write(payload)
    assert await stream.read(1024) == payload
    await close_stream(stream)


@asynccontextmanager
async def echo_server(limits: HostLimits | None = None) -> AsyncIterator[tuple[IHost, str]]:
    host = new_bootstrap_host(limits=limits)
    set_guarded_stream_handler(host, ECHO, echo)
    async with running_host(host) as running:
        yield running, host_multiaddrs(running)[0]


@asynccontextmanager
async def clients(count: int) -> AsyncIterator[list[IHost]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(running_host(new_bootstrap_host(), ()))
            for _ in range(count)
        ]


async def seconds_until(condition: Callable[[], bool], time_limit: float) -> float:
    """Seconds until ``condition()`` holds (polled); ``inf`` if not within ``time_limit``."""
    start = time.perf_counter()
    with trio.move_on_after(time_limit):
        while not condition():  # noqa: ASYNC110 - libp2p offers no event for these
            await trio.sleep(0.01)
        return time.perf_counter() - start
    return float("inf")


async def wait_until_disconnected(host: IHost, time_limit: float) -> float:
    """Seconds until ``host`` has no connected peer; ``inf`` if not within ``time_limit``."""
    return await seconds_until(lambda: not host.get_connected_peers(), time_limit)


def count_tasks() -> int:
    tasks, stack = 0, [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        tasks += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return tasks


# Defect 1 ---------------------------------------------------------------------------------


async def test_inbound_slots_are_released_when_connections_close() -> None:
    # libp2p's pool is max_connections - min_connections (250 by default, here 100). Without the
    # fix every inbound connection keeps its slot until the swarm stops: connection 101 fails.
    pool, total = 100, 400
    async with echo_server(HostLimits(max_connections=pool)) as (server, addr):
        swarm = server.get_network()
        assert isinstance(swarm, Swarm)
        assert swarm._inbound_limiter.total_tokens == pool
        async with clients(8) as hosts, trio.open_nursery() as nursery:
            tasks_before = count_tasks()
            idle = [trio.Event() for _ in hosts]
            for event in idle:
                event.set()

            async def disconnect(host: IHost, done: trio.Event) -> None:
                await host.disconnect(server.get_id())  # ~0.2 s: overlap them
                done.set()

            for i in range(total):  # sequential connections, rotating over the clients
                k = i % len(hosts)
                await idle[k].wait()
                idle[k] = trio.Event()
                await roundtrip(hosts[k], addr)
                nursery.start_soon(disconnect, hosts[k], idle[k])
            for event in idle:
                await event.wait()
            assert await wait_until_disconnected(server, 2.0) < 2.0
            assert await seconds_until(lambda: swarm._inbound_limiter.borrowed_tokens == 0, 2.0) < 2
            # Not one parked task per connection (stream tasks take up to ~1 s to wind down).
            assert await seconds_until(lambda: count_tasks() <= tasks_before + 2, 3.0) < 3


# Defect 2 ---------------------------------------------------------------------------------


async def test_raising_handler_resets_its_stream_and_host_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[tuple[str, Exception]] = []

    async def boom(stream: INetStream) -> None:
        await stream.read(1024)
        raise ValueError("boom")

    def on_error(stream: INetStream, exc: Exception) -> None:
        failures.append((remote_peer_id(stream), exc))
        raise RuntimeError("on_error itself fails")  # must be contained too

    server = new_bootstrap_host()
    set_guarded_stream_handler(server, ECHO, echo)
    set_guarded_stream_handler(server, BOOM, boom, on_error=on_error)
    async with running_host(server), clients(1) as (client,):
        addr = host_multiaddrs(server)[0]
        for _ in range(2):
            stream = await open_bootstrap_stream(client, addr, protocol_id=BOOM)
            await stream.write(b"x")
            with trio.fail_after(5), pytest.raises((StreamEOF, StreamReset)):
                await stream.read(1024)
            await roundtrip(client, addr)  # same host, same connection: still serving
    assert [(peer, type(exc)) for peer, exc in failures] == [
        (client.get_id().to_base58(), ValueError)
    ] * 2
    errors = [r for r in caplog.records if r.name == "taleus_bootstrap.libp2p"]
    assert [r.levelno for r in errors] == [logging.ERROR] * 4  # handler, on_error, twice
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is ValueError


async def test_handler_returning_without_close_ends_the_stream() -> None:
    async def forgetful(stream: INetStream) -> None:
        await stream.write(b"bye")  # neither close() nor reset(): libp2p would leave it open

    server = new_bootstrap_host()
    set_guarded_stream_handler(server, BOOM, forgetful)
    async with running_host(server), clients(1) as (client,):
        stream = await open_bootstrap_stream(client, host_multiaddrs(server)[0], protocol_id=BOOM)
        with trio.fail_after(5):
            assert await stream.read(1024) == b"bye"
            with pytest.raises(StreamEOF):
                await stream.read(1024)


class _StopsOnCheck(dict[TProtocol | None, object]):
    """multiselect's handler table, where ``stop()`` runs just after the membership check of
    ``protocol``: the node stopping between multiselect's check and its lookup of the handler
    (under load, a stream negotiating while ``serve`` drains)."""

    def __init__(self, table: dict[TProtocol | None, object], protocol: TProtocol, stop: Any):
        super().__init__(table)
        self.protocol, self.stop = protocol, stop

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        if found and key == self.protocol:
            self.stop()
        return found


async def negotiate_while_stopping(stop: Callable[[IHost], None]) -> None:
    server = new_bootstrap_host()
    set_guarded_stream_handler(server, ECHO, echo)
    set_guarded_stream_handler(server, BOOM, echo)
    mux = server.get_mux()
    mux.handlers = _StopsOnCheck(mux.handlers, ECHO, partial(stop, server))  # type: ignore[assignment]
    async with running_host(server), clients(1) as (client,):
        addr = host_multiaddrs(server)[0]
        stream = await open_bootstrap_stream(client, addr, protocol_id=ECHO)
        with trio.fail_after(5), pytest.raises((StreamEOF, StreamReset)):
            await stream.write(b"x")  # (raises if the reset came first)
            await stream.read(1024)  # the stream is reset, not echoed
        stream = await open_bootstrap_stream(client, addr, protocol_id=BOOM)
        await stream.write(b"y")
        with trio.fail_after(5):
            assert await stream.read(1024) == b"y"  # the host keeps serving


async def test_a_retired_handler_resets_a_stream_that_was_negotiating() -> None:
    await negotiate_while_stopping(lambda host: retire_stream_handler(host, ECHO))
    # Control: removing the handler there raises out of the host (else revisit the workaround).
    with pytest.raises(ExceptionGroup) as raised:
        await negotiate_while_stopping(lambda host: host.remove_stream_handler(ECHO))
    assert raised.group_contains(KeyError, match=ECHO)


# Defect 3 ---------------------------------------------------------------------------------


def plaintext_only_host() -> IHost:
    key_pair = create_new_key_pair()
    return new_host(
        key_pair=key_pair,
        sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )


async def test_plaintext_peer_cannot_connect() -> None:
    async with echo_server() as (server, addr), running_host(plaintext_only_host(), ()) as client:
        upgrader = server.get_network().upgrader  # type: ignore[attr-defined]
        assert list(upgrader.security_multistream.transports) == ["/noise"]
        with trio.fail_after(10), pytest.raises(BaseLibp2pError):
            await client.connect(info_from_p2p_addr(Multiaddr(addr)))
        assert server.get_connected_peers() == []
        # Control: libp2p's default host still accepts plaintext (else revisit defect 3).
        default_server = new_host(connection_config=ConnectionConfig(max_connections_per_peer=1))
        async with running_host(default_server) as other:
            await client.connect(info_from_p2p_addr(Multiaddr(host_multiaddrs(other)[0])))
            accepted = await seconds_until(lambda: bool(other.get_connected_peers()), 2.0)
            assert accepted < 2 and other.get_connected_peers() == [client.get_id()]


def insecure_hosts() -> list[IHost]:
    """Hand-built hosts that accept plaintext: plaintext only, and libp2p's default (which
    offers Noise first, but the dialing peer picks)."""
    return [plaintext_only_host(), new_host()]


async def test_the_entry_points_refuse_a_host_that_accepts_plaintext() -> None:
    backend = MemoryBackend()
    for host in insecure_hosts():
        with pytest.raises(InsecureHostError, match=PLAINTEXT) as raised:
            SessionManager(host, backend.hooks())
        assert "new_bootstrap_host()" in str(raised.value)
        assert "allow_insecure_host=True" in str(raised.value)
        with pytest.raises(InsecureHostError, match=PLAINTEXT):
            async with open_session_manager(host, backend.hooks()):
                pass
        link = mint_link(
            backend.tokens, [f"/ip4/127.0.0.1/tcp/9/p2p/{PEER}"], "stock", ttl=timedelta(minutes=1)
        )
        with pytest.raises(InsecureHostError, match=PLAINTEXT):
            await initiate_bootstrap(link, host, hooks=backend.invitee_hooks())


async def test_a_host_from_new_bootstrap_host_passes_and_the_opt_in_skips_the_check() -> None:
    inviter, invitee = MemoryBackend(), MemoryBackend()
    assert SessionManager(new_bootstrap_host(), inviter.hooks()).host is not None
    # Opted in (tests only), libp2p's default hosts form a tally over whatever they negotiate.
    async with (
        running_host(new_host()) as server,
        running_host(new_host(), ()) as client,
        open_session_manager(server, inviter.hooks(), allow_insecure_host=True),
    ):
        link = mint_link(inviter.tokens, host_multiaddrs(server), "foil", ttl=timedelta(minutes=1))
        with trio.fail_after(20):
            result = await initiate_bootstrap(
                link, client, hooks=invitee.invitee_hooks(), allow_insecure_host=True
            )
        assert result.inviter_party_id == server.get_id().to_base58()


# Defect 4 ---------------------------------------------------------------------------------


async def connect_seconds(client: IHost, server: IHost, addr: str) -> float:
    start = time.perf_counter()
    await client.connect(info_from_p2p_addr(Multiaddr(addr)))
    elapsed = time.perf_counter() - start
    await client.disconnect(server.get_id())
    return elapsed


async def test_connect_does_not_wait_for_happy_eyeballs() -> None:
    async with echo_server() as (server, addr), clients(1) as (client,):
        median = statistics.median([await connect_seconds(client, server, addr) for _ in range(7)])
        print(f"median connect on loopback: {median * 1000:.1f} ms")
        assert median < 0.150
        # Control: with libp2p's default of 3 connections per peer, connect() waits 250 ms.
        limits = HostLimits(max_connections_per_peer=3)
        async with running_host(new_bootstrap_host(limits=limits), ()) as slow:
            assert await connect_seconds(slow, server, addr) >= 0.250


# Defect 5 ---------------------------------------------------------------------------------


def port_of(addr: str) -> int:
    return int(Multiaddr(addr).value_for_protocol("tcp"))


async def accepts_tcp(port: int) -> bool:
    try:
        socket_stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    await socket_stream.aclose()
    return True


async def test_leaving_running_host_closes_connections_and_listener() -> None:
    async with clients(1) as (client,):
        async with echo_server() as (_server, addr):
            await roundtrip(client, addr)
        seconds = await wait_until_disconnected(client, 2.0)
        print(f"client saw the server leave after {seconds * 1000:.1f} ms")
        assert seconds < 2.0
        assert not await accepts_tcp(port_of(addr))

    async with echo_server() as (server, addr):
        async with running_host(new_bootstrap_host(), ()) as leaving:
            await roundtrip(leaving, addr)
        seconds = await wait_until_disconnected(server, 2.0)
        print(f"server saw the client leave after {seconds * 1000:.1f} ms")
        assert seconds < 2.0
        # Control: a dialer leaving plain host.run() leaves a zombie on the server side.
        plain = new_bootstrap_host()
        async with plain.run([]):
            await roundtrip(plain, addr)
        assert await wait_until_disconnected(server, 1.0) == float("inf")

    # Control: a server leaving plain host.run() still accepts (and handshakes) connections.
    plain = new_bootstrap_host()
    async with plain.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        addr = host_multiaddrs(plain)[0]
    assert await accepts_tcp(port_of(addr))


async def test_running_host_reraises_body_errors_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with running_host(new_bootstrap_host()):
            raise KeyError("not wrapped in ExceptionGroups")


# Defect 6 ---------------------------------------------------------------------------------


async def test_auto_connector_never_redials() -> None:
    async with echo_server() as (server, addr), clients(1) as (client,):
        await roundtrip(client, addr)
        await client.disconnect(server.get_id())
        swarm = client.get_network()
        auto_connector = swarm.auto_connector  # type: ignore[attr-defined]
        auto_connector.clear_all_cooldowns()  # as if the 60 s redial backoff had elapsed
        await auto_connector.maybe_connect()  # what its periodic task and disconnects trigger
        swarm._last_auto_connect_trigger = 0.0  # type: ignore[attr-defined]
        swarm._schedule_auto_connect()  # type: ignore[attr-defined]
        await trio.sleep(0.3)
        assert client.get_connected_peers() == []
        assert server.get_connected_peers() == []


# Defect 7 ---------------------------------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_libp2p_records_reach_standard_logging(caplog: pytest.LogCaptureFixture) -> None:
    new_bootstrap_host()
    route_libp2p_logging()  # idempotent
    # pytest (>= 9) attaches caplog to non-propagating loggers too, so caplog alone would not
    # notice propagate=False: also watch with an application handler on the root logger.
    app_handler = Collect()
    root = logging.getLogger()
    root.addHandler(app_handler)
    try:
        caplog.set_level(logging.DEBUG)  # the root accepts all: libp2p's level must filter
        logging.getLogger("libp2p.something").warning("visible")
        logging.getLogger("libp2p.something").debug("filtered")
        logging.getLogger("libp2p.network.auto_connector").info("filtered too")
    finally:
        root.removeHandler(app_handler)
    expected = [("libp2p.something", "visible")]
    assert [(r.name, r.getMessage()) for r in caplog.records] == expected
    assert [(r.name, r.getMessage()) for r in app_handler.records] == expected


# Defect 8 ---------------------------------------------------------------------------------

ENDINGS = TProtocol("/taleus/test/endings/1.0.0")


@pytest.mark.parametrize("ending", ["half-close", "reset", "connection closed"])
async def test_only_a_half_close_on_a_live_connection_is_an_orderly_end(ending: str) -> None:
    """py-libp2p reports a reset stream and a dead connection as an end of stream, like the
    peer's half-close: ``Libp2pByteStream.ended_in_order`` tells them apart, and a session's
    outcome is confirmed only by the half-close (docs/protocol.md section 10)."""
    done = trio.Event()

    async def end(stream: INetStream) -> None:
        await stream.read(1)
        if ending == "half-close":
            await stream.close()
            await done.wait()  # the connection stays up
        elif ending == "reset":
            await stream.reset()
        else:
            await server.get_network().close_peer(stream.muxed_conn.peer_id)

    server = new_bootstrap_host()
    set_guarded_stream_handler(server, ENDINGS, end)
    async with running_host(server), clients(1) as (client,):
        raw = await open_bootstrap_stream(client, host_multiaddrs(server)[0], protocol_id=ENDINGS)
        stream = Libp2pByteStream(raw)
        await stream.write(b"x")
        with trio.fail_after(5):
            try:
                ended = await stream.read(1024) == b"" and stream.ended_in_order()
            except StreamBroken:
                ended = False
        done.set()
    assert ended is (ending == "half-close")


# Other helpers ----------------------------------------------------------------------------


async def test_remote_peer_id_is_the_authenticated_client() -> None:
    seen: list[str] = []

    async def record(stream: INetStream) -> None:
        seen.append(remote_peer_id(stream))

    server = new_bootstrap_host()
    set_guarded_stream_handler(server, PROTOCOL_ID, record)
    async with running_host(server), clients(1) as (client,):
        stream = await open_bootstrap_stream(client, host_multiaddrs(server)[0])
        with trio.fail_after(5), pytest.raises(StreamEOF):
            await stream.read(1)
        assert remote_peer_id(stream) == server.get_id().to_base58()
    assert seen == [client.get_id().to_base58()]


async def test_failed_dial_does_not_block_the_next_attempt() -> None:
    # libp2p refuses to redial a peer for 60 s after a failed dial (negative cache).
    key_pair = create_new_key_pair()
    async with running_host(new_bootstrap_host(key_pair=key_pair)) as gone:
        addr = host_multiaddrs(gone)[0]  # a port that is closed once we leave
    listen = addr.rsplit("/p2p/", 1)[0]
    async with clients(1) as (client,):
        with pytest.raises(BaseLibp2pError):
            await open_bootstrap_stream(client, addr, protocol_id=ECHO)
        server = new_bootstrap_host(key_pair=key_pair)
        set_guarded_stream_handler(server, ECHO, echo)
        async with running_host(server, [listen]):
            assert host_multiaddrs(server) == [addr]
            with pytest.raises(BaseLibp2pError):  # control: libp2p's own dial is refused
                await client.connect(info_from_p2p_addr(Multiaddr(addr)))
            await roundtrip(client, addr)


async def test_stale_address_does_not_hide_the_given_one() -> None:
    # libp2p keeps every address it was given and dials only one TCP address per peer.
    key_pair = create_new_key_pair()
    async with running_host(new_bootstrap_host(key_pair=key_pair)) as gone:
        stale = host_multiaddrs(gone)[0]
    server = new_bootstrap_host(key_pair=key_pair)
    set_guarded_stream_handler(server, ECHO, echo)
    async with running_host(server), clients(1) as (client,):
        with pytest.raises(BaseLibp2pError):
            await open_bootstrap_stream(client, stale, protocol_id=ECHO)
        addr = host_multiaddrs(server)[0]
        client.get_network().unblock_peer(server.get_id())  # type: ignore[attr-defined]
        with pytest.raises(BaseLibp2pError):  # control: libp2p dials the stale address again
            await client.connect(info_from_p2p_addr(Multiaddr(addr)))
        await roundtrip(client, addr)


async def test_dial_timeout_bounds_a_stalled_handshake() -> None:
    async def mute(socket_stream: trio.SocketStream) -> None:
        await trio.sleep_forever()  # accepts TCP, never answers multistream-select

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        peer = new_bootstrap_host().get_id().to_base58()
        limits = HostLimits(dial_timeout=0.5)
        async with running_host(new_bootstrap_host(limits=limits), ()) as client:
            start = time.perf_counter()
            with pytest.raises(BaseLibp2pError, match="took more than"):
                await open_bootstrap_stream(client, f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
            assert time.perf_counter() - start < 2.0
        nursery.cancel_scope.cancel()


async def test_running_host_raises_when_it_cannot_listen() -> None:
    with pytest.raises(BaseLibp2pError, match="could not listen"):
        async with running_host(new_bootstrap_host(), ["/ip4/192.0.2.1/tcp/0"]):
            pass


async def test_libp2p_alone_lets_a_second_host_share_a_fixed_port() -> None:
    """The defect behind the port check: libp2p listens with SO_REUSEPORT."""
    async with running_host(new_bootstrap_host()) as first:
        addr = str(first.get_transport_addrs()[0])
        second = new_bootstrap_host()
        async with second.run([Multiaddr(addr)]):
            assert len(second.get_network().listeners) == 1  # no error: the port is shared
            await _stop_listening(second)


async def test_running_host_refuses_a_fixed_port_another_host_listens_on() -> None:
    async with echo_server() as (first, first_addr), clients(1) as (client,):
        addr = str(first.get_transport_addrs()[0])
        with pytest.raises(BaseLibp2pError, match=r"cannot listen on .*in use"):
            async with running_host(new_bootstrap_host(), [addr]):
                pass
        await roundtrip(client, first_addr)  # the first host still serves


async def test_shared_hosts_of_one_identity_split_the_connections_of_one_port() -> None:
    """``serve --workers``: a second host with the same key listens on the first one's port
    (``shared=True`` skips the free-port check) and the kernel spreads new connections over
    both; each answers on its own."""
    key_pair = create_new_key_pair()
    served: list[int] = []

    def counting(index: int) -> Callable[[INetStream], Any]:
        async def handler(stream: INetStream) -> None:
            served.append(index)
            await echo(stream)

        return handler

    first, second = new_bootstrap_host(key_pair=key_pair), new_bootstrap_host(key_pair=key_pair)
    set_guarded_stream_handler(first, ECHO, counting(0))
    set_guarded_stream_handler(second, ECHO, counting(1))
    async with running_host(first) as one:
        addr = str(one.get_transport_addrs()[0])
        async with running_host(second, [addr], shared=True) as two:
            check_shared_listeners(one)
            check_shared_listeners(two)
            target = host_multiaddrs(one)[0]
            assert host_multiaddrs(two) == [target]
            for _ in range(16):  # a new connection each: a client host each
                async with clients(1) as (client,):
                    await roundtrip(client, target)
    assert len(served) == 16
    assert set(served) == {0, 1}, served  # both got some (all on one: p = 2**-15)


async def test_check_shared_listeners_refuses_a_socket_without_so_reuseport() -> None:
    async with running_host(new_bootstrap_host()) as host:
        check_shared_listeners(host)  # libp2p sets it
        [listener] = host.get_network().listeners.values()
        for trio_listener in listener.listeners:  # type: ignore[attr-defined]
            trio_listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
        with pytest.raises(BaseLibp2pError, match="lacks SO_REUSEPORT"):
            check_shared_listeners(host)


async def test_running_host_refuses_a_port_held_by_a_plain_socket() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(BaseLibp2pError, match=r"cannot listen on .*in use"):
            async with running_host(new_bootstrap_host(), [f"/ip4/127.0.0.1/tcp/{port}"]):
                pass


@pytest.mark.parametrize("seconds", [0, 0.5, -1])
def test_host_limits_reject_sub_second_negotiation_timeout(seconds: float) -> None:
    with pytest.raises(ValueError, match="negotiation_timeout"):
        HostLimits(negotiation_timeout=seconds)  # type: ignore[arg-type]


# yamux semantics that decide how the protocol sends its last frame --------------------------


@pytest.mark.parametrize("ending", ["close", "reset"])
async def test_final_frame_survives_close_but_not_reset(ending: str) -> None:
    async def final_frame(stream: INetStream) -> None:
        await stream.write(encode_varint_prefixed(b"rejected"))
        await (close_stream(stream) if ending == "close" else reset_stream(stream))

    server = new_bootstrap_host()
    set_guarded_stream_handler(server, BOOM, final_frame)
    async with running_host(server), clients(1) as (client,):
        stream = await open_bootstrap_stream(client, host_multiaddrs(server)[0], protocol_id=BOOM)
        await trio.sleep(0.05)  # both frames have arrived before we read
        with trio.fail_after(5):
            if ending == "close":
                assert await read_varint_prefixed_bytes_limited(stream, 64) == b"rejected"
                with pytest.raises(StreamEOF):
                    await stream.read(1)
            else:  # the reset discards the unread frame
                with pytest.raises(StreamReset):
                    await read_varint_prefixed_bytes_limited(stream, 64)
