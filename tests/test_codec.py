"""Sans-I/O tests of the varint length-prefixed JSON framing.

PROTOCOL.md, "Protocol id and framing".

Plain bytes in, frames or :class:`RemoteProtocolError` out: no trio, no libp2p, no clock.
"""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taleus_bootstrap import (
    DEFAULT_MAX_FRAME_BYTES,
    Accepted,
    Ack,
    AnyFrame,
    Contact,
    DatabaseInfo,
    FrameDecoder,
    LocalProtocolError,
    Provision,
    Provisioned,
    Rejected,
    RejectionCode,
    RemoteProtocolError,
    Tally,
    decode_frame_body,
    encode_frame,
)
from taleus_bootstrap._codec import decode_varint, encode_varint

from .strategies import base_multiaddrs, peer_ids

PEER_A = "12D3KooWDSzhRqU2agPZGfN42irroipZotydBWxLhLoJP9ATU7dq"
PEER_B = "12D3KooWDUuAp3AUT2pT3UiMHbgqsdtSsvD7Et8Hoc6Rzp3yoc56"
SESSION_ID = "s3ss10n-id_0123456789"

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEQUENCES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_provision(provisioner: str = "stock") -> Provision:
    return Provision(
        tally=Tally(
            tally_id="tally-0001",
            provisioner_role=provisioner,  # type: ignore[arg-type]
            stock_party_id=PEER_A,
            foil_party_id=PEER_B,
            created_at=datetime(2024, 5, 17, 12, 30, 0, 250000, tzinfo=UTC),
        ),
        database=DatabaseInfo(
            endpoint="postgres://db.example:5432/tally", credentials_ref="vault:k1"
        ),
    )


def one_of_each() -> list[AnyFrame]:
    """One frame of every type (``accepted`` with and without a provision)."""
    return [
        Contact(
            token="invite-7f3a",
            party_id=PEER_B,
            identity={"name": "Bob", "nested": {"list": [1, 2.5, None, True, "x"]}},
            cadre_addrs=["/ip4/10.0.0.2/tcp/4001", f"/ip4/10.0.0.3/tcp/4001/p2p/{PEER_B}"],
        ),
        Accepted(
            session_id=SESSION_ID,
            inviter_role="stock",
            party_id=PEER_A,
            cadre_addrs=["/ip6/::1/udp/4001/quic-v1"],
            provision=make_provision("stock"),
        ),
        Accepted(
            session_id=SESSION_ID,
            inviter_role="foil",
            party_id=PEER_A,
            cadre_addrs=[],
            provision=None,
        ),
        Provisioned(session_id=SESSION_ID, provision=make_provision("stock")),
        Ack(session_id=SESSION_ID),
        Rejected(code=RejectionCode.BUSY, retry_after_s=1.5),
        Rejected(code=RejectionCode.INVALID_TOKEN, retry_after_s=None),
    ]


def decode_all(data: bytes, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> list[AnyFrame]:
    decoder = FrameDecoder(max_frame_bytes)
    decoder.feed(data)
    frames: list[AnyFrame] = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


def assert_remote(exc_info: pytest.ExceptionInfo[RemoteProtocolError], code: RejectionCode) -> None:
    assert type(exc_info.value) is RemoteProtocolError
    assert exc_info.value.code is code


# --------------------------------------------------------------------------- varint


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16_384, b"\x80\x80\x01"),
        (2**28 - 1, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint_known_values(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded
    assert decode_varint(encoded) == (value, len(encoded))
    assert decode_varint(encoded + b"\xff\xff") == (value, len(encoded))


@given(st.integers(min_value=0, max_value=2**28 - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert 1 <= len(encoded) <= 4
    assert decode_varint(encoded) == (value, len(encoded))
    for cut in range(len(encoded)):
        assert decode_varint(encoded[:cut]) is None


def test_encode_varint_refuses_negative() -> None:
    with pytest.raises(ValueError):
        encode_varint(-1)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("frame", one_of_each(), ids=lambda f: f"{f.type}")
def test_every_frame_type_round_trips(frame: AnyFrame) -> None:
    data = encode_frame(frame)
    assert decode_all(data) == [frame]
    length, used = decode_varint(data)  # type: ignore[misc]
    assert used + length == len(data)
    assert decode_frame_body(data[used:]) == frame


def test_golden_encoding_short_frame() -> None:
    frame = Rejected(code=RejectionCode.RATE_LIMITED, retry_after_s=2.5)
    body = b'{"type":"rejected","code":"rate_limited","retry_after_s":2.5}'
    assert len(body) == 0x3D
    assert encode_frame(frame) == b"\x3d" + body


def test_golden_encoding_two_byte_prefix_keys_in_model_order() -> None:
    frame = Contact(
        token="invite-7f3a",
        party_id=PEER_A,
        identity={"name": "Bøb", "tags": ["a", 1, 2.5, True, None]},
        cadre_addrs=["/ip4/127.0.0.1/tcp/4001", "/dns4/cadre.example/tcp/443/wss"],
    )
    body = (
        '{"type":"contact","token":"invite-7f3a",'
        '"party_id":"12D3KooWDSzhRqU2agPZGfN42irroipZotydBWxLhLoJP9ATU7dq",'
        '"identity":{"name":"Bøb","tags":["a",1,2.5,true,null]},'
        '"cadre_addrs":["/ip4/127.0.0.1/tcp/4001","/dns4/cadre.example/tcp/443/wss"]}'
    ).encode()
    # 238 bytes: LEB128 0xEE 0x01 (low seven bits 0x6E with the continuation bit, then 1).
    assert len(body) == 238
    assert encode_frame(frame) == b"\xee\x01" + body


def test_golden_encoding_nested_provision() -> None:
    frame = Accepted(
        session_id="AAAAAAAAAAAAAAAA",
        inviter_role="stock",
        party_id=PEER_A,
        cadre_addrs=[],
        provision=make_provision("stock"),
    )
    body = (
        '{"type":"accepted","session_id":"AAAAAAAAAAAAAAAA","inviter_role":"stock",'
        f'"party_id":"{PEER_A}","cadre_addrs":[],'
        '"provision":{"tally":{"tally_id":"tally-0001","provisioner_role":"stock",'
        f'"stock_party_id":"{PEER_A}","foil_party_id":"{PEER_B}",'
        '"created_at":"2024-05-17T12:30:00.250000Z"},'
        '"database":{"endpoint":"postgres://db.example:5432/tally","credentials_ref":"vault:k1"}}}'
    ).encode()
    assert encode_frame(frame) == encode_varint(len(body)) + body
    assert encode_frame(Accepted.model_validate(frame.model_dump())) == encode_frame(frame)


def test_fed_one_byte_at_a_time() -> None:
    frames = one_of_each()
    data = b"".join(encode_frame(f) for f in frames)
    ends = []
    position = 0
    for f in frames:
        position += len(encode_frame(f))
        ends.append(position)
    decoder = FrameDecoder()
    got: list[AnyFrame] = []
    for index in range(len(data)):
        decoder.feed(data[index : index + 1])
        frame = decoder.next_frame()
        if frame is None:
            assert index + 1 not in ends
        else:
            assert index + 1 in ends
            got.append(frame)
            assert decoder.next_frame() is None
    assert got == frames
    decoder.feed(b"")
    assert decoder.next_frame() is None
    assert decoder.at_eof


def test_several_frames_in_one_feed() -> None:
    frames = one_of_each()
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode_frame(f) for f in frames) + encode_frame(frames[0])[:3])
    got = [decoder.next_frame() for _ in frames]
    assert got == frames
    assert decoder.next_frame() is None
    assert decoder.buffered > 0
    assert not decoder.at_eof


def test_reading_by_bytes_needed_never_reads_past_the_frame() -> None:
    """A reader asking for ``bytes_needed`` stops exactly at the end of the first frame."""
    first, second = encode_frame(one_of_each()[1]), encode_frame(Ack(session_id=SESSION_ID))
    stream = first + second
    decoder = FrameDecoder()
    position = 0
    frame = None
    while frame is None:
        frame = decoder.next_frame()
        if frame is None:
            chunk = stream[position : position + decoder.bytes_needed]
            position += len(chunk)
            decoder.feed(chunk)
    assert frame == one_of_each()[1]
    assert position == len(first)
    assert decoder.buffered == 0


def test_larger_limit_admits_larger_frames() -> None:
    frame = Contact(token="t", party_id=PEER_B, identity={"k": "x" * 8000}, cadre_addrs=[])
    data = encode_frame(frame, max_frame_bytes=32 * 1024)
    assert decode_all(data, max_frame_bytes=32 * 1024) == [frame]


# --------------------------------------------------------------------------- limits and defects


def test_frame_too_large_raised_as_soon_as_prefix_is_read() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_varint(DEFAULT_MAX_FRAME_BYTES + 1))
    with pytest.raises(RemoteProtocolError) as exc_info:
        decoder.next_frame()
    assert_remote(exc_info, RejectionCode.FRAME_TOO_LARGE)


def test_frame_too_large_prefix_split_across_feeds() -> None:
    prefix = encode_varint(201)
    assert len(prefix) == 2
    decoder = FrameDecoder(max_frame_bytes=200)
    decoder.feed(prefix[:1])
    assert decoder.next_frame() is None
    decoder.feed(prefix[1:])
    with pytest.raises(RemoteProtocolError) as exc_info:
        decoder.next_frame()
    assert_remote(exc_info, RejectionCode.FRAME_TOO_LARGE)


def test_frame_at_exactly_the_limit_is_accepted() -> None:
    frame = Ack(session_id=SESSION_ID)
    data = encode_frame(frame)
    body_length = len(data) - 1
    assert decode_all(data, max_frame_bytes=body_length) == [frame]
    with pytest.raises(RemoteProtocolError) as exc_info:
        decode_all(data, max_frame_bytes=body_length - 1)
    assert_remote(exc_info, RejectionCode.FRAME_TOO_LARGE)


@pytest.mark.parametrize(
    "prefix",
    [
        b"\x80\x80\x80\x80",
        b"\xff\xff\xff\xff",
        b"\x80\x80\x80\x80\x01",
        b"\xff\xff\xff\xff\xff\x01",
    ],
)
def test_varint_longer_than_four_bytes_is_malformed(prefix: bytes) -> None:
    decoder = FrameDecoder(max_frame_bytes=2**30)
    decoder.feed(prefix)
    with pytest.raises(RemoteProtocolError) as exc_info:
        decoder.next_frame()
    assert_remote(exc_info, RejectionCode.MALFORMED)


@pytest.mark.parametrize("prefix", [b"\x81\x00", b"\x80\x00", b"\x85\x80\x00", b"\xff\xff\xff\x00"])
def test_non_minimal_varint_is_malformed(prefix: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(prefix + b"{}")
    with pytest.raises(RemoteProtocolError) as exc_info:
        decoder.next_frame()
    assert_remote(exc_info, RejectionCode.MALFORMED)


def test_empty_body_is_malformed() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00")
    with pytest.raises(RemoteProtocolError) as exc_info:
        decoder.next_frame()
    assert_remote(exc_info, RejectionCode.MALFORMED)


@pytest.mark.parametrize("keep", [1, 2, 10, -1])
def test_truncated_frame_at_eof_is_malformed(keep: int) -> None:
    data = encode_frame(one_of_each()[1])
    decoder = FrameDecoder()
    decoder.feed(data[:keep])
    assert decoder.next_frame() is None
    decoder.feed(b"")
    assert not decoder.at_eof
    with pytest.raises(RemoteProtocolError) as exc_info:
        decoder.next_frame()
    assert_remote(exc_info, RejectionCode.MALFORMED)


def test_eof_inside_the_length_prefix_is_malformed() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x80")
    assert decoder.next_frame() is None
    decoder.feed(b"")
    with pytest.raises(RemoteProtocolError) as exc_info:
        decoder.next_frame()
    assert_remote(exc_info, RejectionCode.MALFORMED)


def test_clean_eof_between_frames() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(Ack(session_id=SESSION_ID)))
    decoder.feed(b"")
    assert not decoder.at_eof  # a whole frame is still waiting to be handed out
    assert decoder.next_frame() == Ack(session_id=SESSION_ID)
    assert decoder.next_frame() is None
    assert decoder.at_eof
    assert decoder.next_frame() is None


def test_clean_eof_on_empty_stream() -> None:
    decoder = FrameDecoder()
    assert not decoder.at_eof
    assert decoder.next_frame() is None
    decoder.feed(b"")
    assert decoder.next_frame() is None
    assert decoder.at_eof


def test_feeding_after_eof_is_a_local_bug() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"")
    with pytest.raises(RuntimeError):
        decoder.feed(b"\x01")


def test_decoder_keeps_raising_after_an_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x02{]")
    with pytest.raises(RemoteProtocolError) as first:
        decoder.next_frame()
    assert first.value.code is RejectionCode.MALFORMED
    decoder.feed(encode_frame(Ack(session_id=SESSION_ID)))
    for _ in range(3):
        with pytest.raises(RemoteProtocolError) as again:
            decoder.next_frame()
        assert again.value is first.value
    decoder.feed(b"")
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_decoder_keeps_raising_after_frame_too_large() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    decoder.feed(encode_varint(11) + b"x" * 11 + encode_frame(Ack(session_id=SESSION_ID)))
    for _ in range(2):
        with pytest.raises(RemoteProtocolError) as exc_info:
            decoder.next_frame()
        assert_remote(exc_info, RejectionCode.FRAME_TOO_LARGE)


def test_a_bad_frame_after_good_ones() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(Ack(session_id=SESSION_ID)) + b"\x05[1,2]")
    assert decoder.next_frame() == Ack(session_id=SESSION_ID)
    with pytest.raises(RemoteProtocolError) as exc_info:
        decoder.next_frame()
    assert_remote(exc_info, RejectionCode.MALFORMED)


def test_decoder_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(0)


def test_encoding_a_too_big_frame_is_a_local_error() -> None:
    frame = Contact(token="t", party_id=PEER_B, identity={"k": "x" * 8000}, cadre_addrs=[])
    with pytest.raises(LocalProtocolError) as exc_info:
        encode_frame(frame, max_frame_bytes=1024)
    assert not isinstance(exc_info.value, RemoteProtocolError)
    assert exc_info.value.code is RejectionCode.INTERNAL_ERROR


def test_encoding_at_exactly_the_limit_succeeds() -> None:
    frame = Ack(session_id=SESSION_ID)
    body_length = len(encode_frame(frame)) - 1
    assert encode_frame(frame, max_frame_bytes=body_length)[1:] == frame.model_dump_json().encode()
    with pytest.raises(LocalProtocolError):
        encode_frame(frame, max_frame_bytes=body_length - 1)


# --------------------------------------------------------------------------- strategies

multiaddrs = st.one_of(
    base_multiaddrs,
    st.builds(lambda base, peer: f"{base}/p2p/{peer}", base_multiaddrs, peer_ids),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


identities = st.dictionaries(st.text(max_size=10), json_values, max_size=5).filter(
    lambda value: _depth(value) <= 16
)
session_ids = st.from_regex(r"[A-Za-z0-9_-]{16,64}", fullmatch=True)
roles = st.sampled_from(["stock", "foil"])

tallies = st.builds(
    Tally,
    tally_id=st.text(min_size=1, max_size=128),
    provisioner_role=roles,
    stock_party_id=peer_ids,
    foil_party_id=peer_ids,
    created_at=st.datetimes(timezones=st.just(UTC)),
)
provisions = st.builds(
    Provision,
    tally=tallies,
    database=st.builds(
        DatabaseInfo,
        endpoint=st.text(min_size=1, max_size=200),
        credentials_ref=st.text(min_size=1, max_size=100),
    ),
)
contacts = st.builds(
    Contact,
    token=st.text(min_size=1, max_size=512),
    party_id=peer_ids,
    identity=identities,
    cadre_addrs=st.lists(multiaddrs, max_size=16),
)


@st.composite
def accepteds(draw: st.DrawFn) -> Accepted:
    role = draw(roles)
    return Accepted(
        session_id=draw(session_ids),
        inviter_role=role,
        party_id=draw(peer_ids),
        cadre_addrs=draw(st.lists(multiaddrs, max_size=16)),
        provision=draw(provisions) if role == "stock" else None,
    )


frames: st.SearchStrategy[AnyFrame] = st.one_of(
    contacts,
    accepteds(),
    st.builds(Provisioned, session_id=session_ids, provision=provisions),
    st.builds(Ack, session_id=session_ids),
    st.builds(
        Rejected,
        code=st.sampled_from(list(RejectionCode)),
        retry_after_s=st.none() | st.floats(min_value=0, max_value=86_400),
    ),
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --------------------------------------------------------------------------- properties


@FUZZ
@given(
    pieces=st.lists(
        st.one_of(
            st.binary(max_size=64),
            frames.map(encode_frame),
            st.sampled_from(
                [
                    b"\x00",
                    b"\x80",
                    b"\xff\xff\xff\xff",
                    b"\x81\x00",
                    b"\x02{}",
                    b"\x04null",
                    b"\x03NaN",
                ]
            ),
        ),
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    max_frame_bytes=st.sampled_from([1, 16, 300, DEFAULT_MAX_FRAME_BYTES]),
    end=st.booleans(),
)
def test_any_bytes_in_any_chunking_yield_frames_or_remote_error(
    pieces: list[bytes], cuts: list[int], max_frame_bytes: int, end: bool
) -> None:
    data = b"".join(pieces)
    decoder = FrameDecoder(max_frame_bytes)
    try:
        for chunk in _chunks(data, cuts):
            decoder.feed(chunk)
            while (frame := decoder.next_frame()) is not None:
                assert isinstance(frame, Contact | Accepted | Provisioned | Ack | Rejected)
        if end:
            decoder.feed(b"")
            assert decoder.next_frame() is None
            assert decoder.at_eof
    except RemoteProtocolError as exc:
        assert exc.code in (RejectionCode.MALFORMED, RejectionCode.FRAME_TOO_LARGE)
        with pytest.raises(RemoteProtocolError):
            decoder.next_frame()


@ROUND_TRIP
@given(frame=frames)
def test_valid_frames_round_trip_exactly(frame: AnyFrame) -> None:
    data = encode_frame(frame)
    used = decode_varint(data)[1]  # type: ignore[index]
    assert decode_frame_body(data[used:]) == frame
    assert decode_all(data) == [frame]


@SEQUENCES
@given(sequence=st.lists(frames, min_size=1, max_size=4), cuts=st.lists(st.integers(0), max_size=8))
def test_frame_sequences_round_trip_in_any_chunking(
    sequence: list[AnyFrame], cuts: list[int]
) -> None:
    decoder = FrameDecoder()
    got: list[AnyFrame] = []
    for chunk in _chunks(b"".join(encode_frame(f) for f in sequence), cuts):
        decoder.feed(chunk)
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    decoder.feed(b"")
    assert decoder.next_frame() is None
    assert decoder.at_eof
    assert got == sequence


def _decode_or_malformed(body: bytes) -> AnyFrame | None:
    try:
        frame = decode_frame_body(body)
    except RemoteProtocolError as exc:
        assert type(exc) is RemoteProtocolError
        assert exc.code is RejectionCode.MALFORMED
        return None
    assert isinstance(frame, Contact | Accepted | Provisioned | Ack | Rejected)
    return frame


any_json = st.recursive(
    st.one_of(json_scalars, st.floats(), st.text()),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=12), children, max_size=5),
    ),
    max_leaves=30,
)
FIELD_NAMES = sorted(
    {
        name
        for model in (Contact, Accepted, Provisioned, Ack, Rejected)
        for name in model.model_fields
    }
)
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["contact", "accepted", "provisioned", "ack", "rejected", "x"])},
    optional={name: any_json for name in FIELD_NAMES if name != "type"},
)


@FUZZ
@given(value=st.one_of(any_json, frame_like))
def test_decode_frame_body_on_arbitrary_json(value: Any) -> None:
    _decode_or_malformed(json.dumps(value, allow_nan=True).encode())


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_decode_frame_body_on_arbitrary_bytes(body: bytes) -> None:
    _decode_or_malformed(body)


@FUZZ
@given(frame=frames, data=st.data())
def test_decode_frame_body_on_mutated_valid_frames(frame: AnyFrame, data: st.DataObject) -> None:
    value = json.loads(frame.model_dump_json())
    target = value
    # Walk down into a random nested object, then add, drop or replace one key there.
    while True:
        nested = [k for k, v in target.items() if isinstance(v, dict)]
        if not nested or data.draw(st.booleans()):
            break
        target = target[data.draw(st.sampled_from(nested))]
    action = data.draw(st.sampled_from(["add", "drop", "replace"]))
    if action == "add":
        target[data.draw(st.text(max_size=12))] = data.draw(any_json)
    elif action == "drop" and target:
        del target[data.draw(st.sampled_from(sorted(target)))]
    elif target:
        target[data.draw(st.sampled_from(sorted(target)))] = data.draw(any_json)
    decoded = _decode_or_malformed(json.dumps(value, allow_nan=True).encode())
    if decoded is not None and not _has_non_finite(value):
        # Whatever was accepted re-encodes to something that decodes to the same frame.
        assert decode_all(encode_frame(decoded, max_frame_bytes=2**20), max_frame_bytes=2**20) == [
            decoded
        ]


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


# --------------------------------------------------------------------------- hostile bodies


def _contact_with_identity(identity_json: str) -> bytes:
    return (
        f'{{"type":"contact","token":"t","party_id":"{PEER_B}",'
        f'"identity":{identity_json},"cadre_addrs":[]}}'
    ).encode()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 1000 + b"]" * 1000, id="lists-1000-top-level"),
        pytest.param(b'{"a":' * 1000 + b"1" + b"}" * 1000, id="objects-1000-top-level"),
        pytest.param(_contact_with_identity("[" * 1000 + "]" * 1000), id="identity-lists-1000"),
        pytest.param(
            _contact_with_identity('{"a":' * 1000 + "1" + "}" * 1000), id="identity-objects-1000"
        ),
        pytest.param(b"[" * 100_000, id="unclosed-100000"),
        pytest.param(_contact_with_identity("[" * 17 + "]" * 17), id="identity-depth-18"),
    ],
)
def test_deep_nesting_is_malformed(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as exc_info:
        decode_frame_body(body)
    assert_remote(exc_info, RejectionCode.MALFORMED)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(
            b'{"type":"ack","session_id":"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0"}',
            id="invalid-utf8-in-string",
        ),
        pytest.param(b'\xef\xbb\xbf{"type":"ack","session_id":"AAAAAAAAAAAAAAAA"}', id="bom"),
        pytest.param(b'{"type":"ack","session_id":"\\ud800AAAAAAAAAAAAAAAA"}', id="lone-surrogate"),
        pytest.param(b'{"type":"rejected","code":"busy","retry_after_s":NaN}', id="nan"),
        pytest.param(b'{"type":"rejected","code":"busy","retry_after_s":Infinity}', id="inf"),
        pytest.param(b'{"type":"rejected","code":"busy","retry_after_s":-Infinity}', id="-inf"),
        pytest.param(b'{"type":"rejected","code":"busy","retry_after_s":1e400}', id="overflow"),
        pytest.param(b'{"type":"ack","session_id":"AAAAAAAAAAAAAAAA"} {}', id="trailing-data"),
        pytest.param(b'{"type":"ack","session_id":"AAAAAAAAAAAAAAAA"', id="unterminated"),
        pytest.param(b"null", id="null"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"ack"', id="string"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b'{"type":"hello"}', id="unknown-type"),
        pytest.param(b'{"type":null,"session_id":"AAAAAAAAAAAAAAAA"}', id="null-type"),
        pytest.param(b'{"type":["ack"],"session_id":"AAAAAAAAAAAAAAAA"}', id="list-type"),
        pytest.param(b'{"session_id":"AAAAAAAAAAAAAAAA"}', id="missing-type"),
        pytest.param(
            b'{"type":"contact","token":"'
            + b"x" * (1 << 20)
            + b'","party_id":"'
            + PEER_B.encode()
            + b'","identity":{},"cadre_addrs":[]}',
            id="huge-token",
        ),
        pytest.param(_contact_with_identity('{"k":"' + "x" * 200_000 + '"}'), id="huge-identity"),
        pytest.param(_contact_with_identity('{"k":' + "9" * 20_000 + "}"), id="huge-integer"),
    ],
)
def test_hostile_bodies_are_malformed(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as exc_info:
        decode_frame_body(body)
    assert_remote(exc_info, RejectionCode.MALFORMED)


def test_malformed_detail_never_echoes_the_input() -> None:
    secret = "tok-SECRET-0123456789"
    body = json.dumps(
        {"type": "contact", "token": secret, "party_id": "0OIl", "identity": {}, "cadre_addrs": []}
    ).encode()
    with pytest.raises(RemoteProtocolError) as exc_info:
        decode_frame_body(body)
    assert secret not in str(exc_info.value)
    assert secret not in exc_info.value.detail
