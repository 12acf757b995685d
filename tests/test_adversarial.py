"""A public endpoint under abuse, over real libp2p hosts: malformed and hostile frames, streams
that stall, a flooding peer, token guessing. The node must answer each with the code
PROTOCOL.md names, record every session, and keep serving honest peers meanwhile."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from functools import partial

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taleus_bootstrap import (
    Contact,
    ManagerConfig,
    Rejected,
    RejectionCode,
    encode_frame,
    initiate_bootstrap,
)
from taleus_bootstrap._codec import encode_varint
from taleus_bootstrap._libp2p import open_bootstrap_stream

from .adversary import (
    Reply,
    client_hosts,
    contact_for,
    flood,
    honest_bootstraps,
    read_reply,
    rss_bytes,
    send_raw,
    serving,
)
from .conftest import Backend

pytestmark = pytest.mark.libp2p

GENEROUS = {
    "peer_rate": 100_000,
    "peer_burst": 100_000,
    "global_rate_per_s": 100_000.0,
    "global_burst": 100_000,
}


def prefixed(body: bytes) -> bytes:
    return encode_varint(len(body)) + body


def rejected_code(reply: Reply) -> RejectionCode | None:
    """The code of the single ``rejected`` frame the node answered with (None: no reply)."""
    assert reply.error is None, reply
    if not reply.frames:
        return None
    assert len(reply.frames) == 1 and isinstance(reply.frames[0], Rejected), reply.frames
    return reply.frames[0].code


# -- frame fuzzing against a live manager ----------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),  # NaN / inf reach the wire as JSON tokens
    st.text(max_size=30),
)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["contact", "ack", "accepted", "provisioned", "rejected", "x"])},
    optional={
        "token": _json,
        "party_id": _json,
        "identity": _json,
        "cadre_addrs": _json,
        "session_id": _json,
        "unknown_field": _json,
    },
)
_valid_contact = encode_frame(
    Contact(
        token="t" * 40,
        party_id="12D3KooWDUuAp3AUT2pT3UiMHbgqsdtSsvD7Et8Hoc6Rzp3yoc56",
        identity={"name": "Bob"},
        cadre_addrs=[],
    )
)
hostile_payloads = st.one_of(
    st.binary(max_size=300),  # garbage
    st.binary(min_size=1, max_size=300).map(prefixed),  # a valid prefix, a corrupt body
    _frame_like.map(lambda v: prefixed(json.dumps(v, allow_nan=True).encode())),  # wrong types
    _json.map(lambda v: prefixed(json.dumps(v, allow_nan=True).encode())),
    st.integers(1, len(_valid_contact) - 1).map(lambda k: _valid_contact[:k]),  # truncated
    st.integers(100, 30_000).map(lambda n: prefixed(b"[" * n + b"]" * n)),  # deep nesting
    st.binary(min_size=1, max_size=40).map(  # invalid UTF-8 inside a string
        lambda b: prefixed(b'{"type":"contact","token":"\xff\xfe' + b + b'"}')
    ),
    st.integers(70_000, 2**28 - 1).map(lambda n: encode_varint(n) + b"{"),  # oversized prefix
    st.integers(1, 4).map(
        lambda k: prefixed(json.dumps({"type": "contact", "token": "a" * 70_000 * k}).encode())
    ),
    st.just(b""),  # nothing at all, then end of stream
)
FUZZ_CODES = {RejectionCode.MALFORMED, RejectionCode.FRAME_TOO_LARGE}


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(hostile_payloads, min_size=25, max_size=25))
def test_hostile_frames_each_get_a_recorded_rejection_and_the_node_keeps_serving(
    payloads: list[bytes],
) -> None:
    async def main() -> None:
        config = ManagerConfig(**GENEROUS, max_concurrent_sessions=200)
        async with serving(config) as node, client_hosts(1) as [attacker]:
            replies: list[Reply] = [Reply()] * len(payloads)

            async def one(i: int, payload: bytes) -> None:
                replies[i] = await send_raw(attacker, node.addr, payload)

            async with trio.open_nursery() as nursery:
                for i, payload in enumerate(payloads):
                    nursery.start_soon(one, i, payload)
            honest: list[bool] = []
            await honest_bootstraps(node, attacker, 1, honest)  # the same peer, even
            await node.manager.wait_idle()
            assert honest == [True]
            history = node.manager.history()
            assert len(history) == len(payloads) + 1
            for reply in replies:
                code = rejected_code(reply)
                assert code is None or code in FUZZ_CODES, (code, reply)
            failed = [r for r in history if r.final_state != "COMPLETED"]
            assert len(failed) == len(payloads)
            assert all(r.final_state == "FAILED" and r.code in FUZZ_CODES for r in failed), failed

    trio.run(main)


# -- slowloris ---------------------------------------------------------------------------------


async def test_a_thousand_stalled_streams_are_reaped_while_honest_peers_succeed() -> None:
    step = 2.0
    config = ManagerConfig(
        **GENEROUS,
        max_concurrent_sessions=1_100,
        max_session_history=2_000,
        step_timeout=step,
        session_timeout=20,
    )
    async with serving(config) as node, client_hosts(21) as hosts:
        attackers, honest_host = hosts[:20], hosts[20]
        partial = _valid_contact[:7]  # a length prefix and a few bytes of body, then nothing
        before = rss_bytes()
        streams = []
        for i in range(1_000):
            stream = await open_bootstrap_stream(attackers[i % 20], node.addr)
            if i % 2:
                await stream.write(partial)
            streams.append(stream)
        opened = trio.current_time()
        held_rss = rss_bytes()
        honest: list[bool] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(honest_bootstraps, node, honest_host, 10, honest)
            with trio.fail_after(step + 10):
                await node.manager.wait_idle()
        reaped_after = trio.current_time() - opened
        replies = [await read_reply(stream, timeout=5) for stream in streams]
        for stream in streams:
            await stream.reset()
    timeouts = [r for r in node.manager.history() if r.code == RejectionCode.TIMEOUT]
    print(
        f"\n1000 stalled streams: all reaped {reaped_after:.1f} s after the last was opened;"
        f" RSS +{(held_rss - before) / 2**20:.1f} MiB while held (both ends in this process);"
        f" honest bootstraps meanwhile {sum(honest)}/{len(honest)}"
    )
    assert len(timeouts) == 1_000
    assert all(rejected_code(r) in (RejectionCode.TIMEOUT, None) for r in replies)
    assert honest == [True] * 10
    assert reaped_after < step + 5
    assert held_rss - before < 96 * 2**20


# -- one peer flooding at 100x its rate --------------------------------------------------------


async def test_a_peer_flooding_at_100x_its_rate_is_held_to_its_rate_and_others_are_served() -> None:
    rate, burst = 2, 2  # starts per second per peer
    config = ManagerConfig(
        peer_rate=rate,
        peer_rate_period=1.0,
        peer_burst=burst,
        global_rate_per_s=10_000.0,
        global_burst=10_000,
        max_concurrent_sessions=500,
    )
    async with serving(config) as node, client_hosts(6) as hosts:
        flooder, others = hosts[0], hosts[1:]
        codes: list[RejectionCode | None] = []
        honest: list[bool] = []
        payload = encode_frame(contact_for(flooder, "wrong-token-" + "x" * 20))

        async def flood_one() -> None:
            codes.append(rejected_code(await send_raw(flooder, node.addr, payload)))

        async with trio.open_nursery() as nursery:
            for host in others:  # each within its own rate
                paced = partial(honest_bootstraps, pause=1 / rate + 0.1)
                nursery.start_soon(paced, node, host, 4, honest)
            for _ in range(2 * rate * 100):  # 100x the rate, for 2 s
                nursery.start_soon(flood_one)
                await trio.sleep(1 / (rate * 100))
        # The window the node saw the flood in (its own start times, refused streams included).
        me = flooder.get_id().to_base58()
        seen = sorted(r.started_at for r in node.manager.history() if r.peer_id == me)
        window = (seen[-1] - seen[0]).total_seconds()
    admitted = codes.count(RejectionCode.INVALID_TOKEN)
    expected = burst + rate * window
    print(
        f"\nflood: {len(codes)} streams in {window:.1f} s, {admitted} admitted (expected"
        f" {expected:.1f} ± {burst}), {codes.count(RejectionCode.RATE_LIMITED)} rate_limited;"
        f" other peers {sum(honest)}/{len(honest)}"
    )
    assert set(codes) <= {RejectionCode.INVALID_TOKEN, RejectionCode.RATE_LIMITED}
    assert abs(admitted - expected) <= burst
    assert sum(honest) >= 0.99 * len(honest)


# -- token guessing ----------------------------------------------------------------------------


async def test_ten_thousand_wrong_tokens_all_invalid_and_indistinguishable() -> None:
    """Unknown, expired, revoked and spent tokens get byte-identical answers; then 10 000
    guesses (two client processes, five peers each) are all answered ``invalid_token``, with
    those same bytes."""
    config = ManagerConfig(**GENEROUS, max_concurrent_sessions=500, max_session_history=100)
    async with serving(config) as node, client_hosts(2) as [spender, asker]:
        tokens = node.backend.tokens
        expired = tokens.mint("stock", ttl=timedelta(microseconds=1))
        revoked = tokens.mint("stock")
        tokens.revoke(revoked)
        spent = tokens.mint("stock")
        await initiate_bootstrap(node.link(spent), spender, hooks=Backend().invitee_hooks())
        special = {"unknown": "never-minted-" + "z" * 24, "expired": expired}
        special |= {"revoked": revoked, "spent": spent}
        raw: dict[str, bytes] = {}
        for name, token in special.items():
            reply = await send_raw(asker, node.addr, encode_frame(contact_for(asker, token)))
            assert rejected_code(reply) == RejectionCode.INVALID_TOKEN
            raw[name] = reply.raw
        assert len(set(raw.values())) == 1, raw  # byte-identical
        started = time.perf_counter()
        result = await flood(node.addr, 10_000, 2, "--hosts", "5", "--concurrency", "32")
        elapsed = time.perf_counter() - started
        await node.manager.wait_idle()
        by_rejection = dict(node.manager.statistics().by_rejection)
    print(
        f"\n10000 wrong tokens in {elapsed:.1f} s ({10_000 / elapsed:.0f}/s):"
        f" {dict(result['counts'])}"
    )
    assert result["counts"] == {"invalid_token": 10_000}
    assert result["distinct"] == {"invalid_token": {raw["unknown"].hex()}}
    assert by_rejection["invalid_token"] == 10_000 + len(special)


async def test_a_single_guesser_is_rate_limited() -> None:
    """With the default per-peer limits, one peer gets ``peer_burst`` guesses, then only
    ``rate_limited`` (with a retry-after), whatever token it tries."""
    config = ManagerConfig()
    async with serving(config) as node, client_hosts(1) as [guesser]:
        codes = []
        for i in range(60):
            contact = contact_for(guesser, f"guess-{i:04d}-{'q' * 20}")
            codes.append(rejected_code(await send_raw(guesser, node.addr, encode_frame(contact))))
    assert codes[: config.peer_burst] == [RejectionCode.INVALID_TOKEN] * config.peer_burst
    assert set(codes[config.peer_burst + 1 :]) == {RejectionCode.RATE_LIMITED}
