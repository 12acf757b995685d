"""Every bound of PROTOCOL.md on every frame, checked on the wire (``decode_frame_body``).

A frame that breaks a bound must be ``malformed``; the same frame just inside the bound must decode.
Validation is strict: no coercion of strings to numbers or numbers to strings.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from taleus_bootstrap import (
    Accepted,
    Ack,
    AnyFrame,
    Contact,
    DatabaseInfo,
    Provision,
    Provisioned,
    Rejected,
    RejectionCode,
    RemoteProtocolError,
    Tally,
    decode_frame_body,
    encode_frame,
)
from taleus_bootstrap._codec import decode_varint
from taleus_bootstrap._frames import (
    MAX_CADRE_ADDRS,
    MAX_IDENTITY_BYTES,
    MAX_IDENTITY_DEPTH,
    MAX_TOKEN_CHARS,
)

PEER_A = "12D3KooWDSzhRqU2agPZGfN42irroipZotydBWxLhLoJP9ATU7dq"
PEER_B = "12D3KooWDUuAp3AUT2pT3UiMHbgqsdtSsvD7Et8Hoc6Rzp3yoc56"
SESSION_ID = "AbCdEfGh-_012345"
CREATED_AT = "2024-05-17T12:30:00Z"


def tally() -> dict[str, Any]:
    return {
        "tally_id": "tally-1",
        "provisioner_role": "stock",
        "stock_party_id": PEER_A,
        "foil_party_id": PEER_B,
        "created_at": CREATED_AT,
    }


def provision() -> dict[str, Any]:
    return {"tally": tally(), "database": {"endpoint": "pg://db", "credentials_ref": "ref-1"}}


def contact() -> dict[str, Any]:
    return {
        "type": "contact",
        "token": "tok",
        "party_id": PEER_B,
        "identity": {"name": "Bob"},
        "cadre_addrs": ["/ip4/10.0.0.2/tcp/4001"],
    }


def accepted_stock() -> dict[str, Any]:
    return {
        "type": "accepted",
        "session_id": SESSION_ID,
        "inviter_role": "stock",
        "party_id": PEER_A,
        "cadre_addrs": ["/ip4/10.0.0.1/tcp/4001"],
        "provision": provision(),
    }


def accepted_foil() -> dict[str, Any]:
    return {**accepted_stock(), "inviter_role": "foil", "provision": None}


def provisioned() -> dict[str, Any]:
    return {"type": "provisioned", "session_id": SESSION_ID, "provision": provision()}


def ack() -> dict[str, Any]:
    return {"type": "ack", "session_id": SESSION_ID}


def rejected() -> dict[str, Any]:
    return {"type": "rejected", "code": "busy", "retry_after_s": 1.5}


VALID: dict[str, Callable[[], dict[str, Any]]] = {
    "contact": contact,
    "accepted_stock": accepted_stock,
    "accepted_foil": accepted_foil,
    "provisioned": provisioned,
    "ack": ack,
    "rejected": rejected,
}


def body(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode()


def strip_prefix(data: bytes) -> bytes:
    decoded = decode_varint(data)
    assert decoded is not None
    length, used = decoded
    assert len(data) == used + length
    return data[used:]


def decode(value: Any) -> AnyFrame:
    return decode_frame_body(body(value))


def assert_malformed(value: Any) -> None:
    with pytest.raises(RemoteProtocolError) as exc_info:
        decode(value)
    assert exc_info.value.code is RejectionCode.MALFORMED


def with_path(value: dict[str, Any], path: tuple[str, ...], new: Any) -> dict[str, Any]:
    out = copy.deepcopy(value)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return out


def without_path(value: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = copy.deepcopy(value)
    target = out
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return out


def leaf_paths(value: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a frame dict, nested objects included (but not inside ``identity``)."""
    paths = []
    for key, child in value.items():
        paths.append((*prefix, key))
        if isinstance(child, dict) and key != "identity":
            paths.extend(leaf_paths(child, (*prefix, key)))
    return paths


def object_paths(value: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The path of every model object in a frame dict (the frame itself is ``()``)."""
    paths = [prefix]
    for key, child in value.items():
        if isinstance(child, dict) and key != "identity":
            paths.extend(object_paths(child, (*prefix, key)))
    return paths


ALL_FIELDS = [
    pytest.param(name, path, id=f"{name}:{'.'.join(path)}")
    for name, factory in VALID.items()
    for path in leaf_paths(factory())
]
ALL_OBJECTS = [
    pytest.param(name, path, id=f"{name}:{'.'.join(path) or 'frame'}")
    for name, factory in VALID.items()
    for path in object_paths(factory())
]


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", list(VALID))
def test_valid_frames_decode_and_round_trip(name: str) -> None:
    value = VALID[name]()
    frame = decode(value)
    assert frame.type == value["type"]
    assert json.loads(frame.model_dump_json()) == value
    assert decode_frame_body(strip_prefix(encode_frame(frame))) == frame


@pytest.mark.parametrize(("name", "path"), ALL_FIELDS)
def test_missing_field_is_malformed(name: str, path: tuple[str, ...]) -> None:
    assert_malformed(without_path(VALID[name](), path))


@pytest.mark.parametrize(("name", "path"), ALL_OBJECTS)
def test_unknown_field_is_malformed(name: str, path: tuple[str, ...]) -> None:
    value = VALID[name]()
    target = value
    for key in path:
        target = target[key]
    target["x_extra"] = None
    assert_malformed(value)


def _wrong_types(value: Any) -> list[Any]:
    """JSON values of a type other than ``value``'s (no coercion must rescue any of them)."""
    if value is None:
        return [0, "", [], {}, False]
    if isinstance(value, bool):
        return [1, "true", None]
    if isinstance(value, str):
        return [1, 1.5, True, None, [value], {"v": value}]
    if isinstance(value, int | float):
        return [str(value), True, [value], {"v": value}]
    if isinstance(value, list):
        return [value[0] if value else "x", {}, None, 1]
    if isinstance(value, dict):
        return [[], "x", 1, None] if value else [[], "x", 1]
    raise AssertionError(value)


def get_path(value: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def _wrong_type_cases() -> list[Any]:
    cases = []
    for name, factory in VALID.items():
        for path in leaf_paths(factory()):
            if name == "accepted_foil" and path == ("provision",):
                continue  # null vs object: covered by the provision-iff-stock tests
            for wrong in _wrong_types(get_path(factory(), path)):
                if path == ("provision",) and wrong is None and name == "accepted_stock":
                    continue  # likewise
                label = f"{name}:{'.'.join(path)}:{type(wrong).__name__}"
                cases.append(pytest.param(name, path, wrong, id=label))
    return cases


WRONG_TYPES = _wrong_type_cases()


@pytest.mark.parametrize(("name", "path", "wrong"), WRONG_TYPES)
def test_wrong_type_is_malformed(name: str, path: tuple[str, ...], wrong: Any) -> None:
    assert_malformed(with_path(VALID[name](), path, wrong))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("token",), 123),
        (("party_id",), 12345),
        (("cadre_addrs",), "/ip4/10.0.0.2/tcp/4001"),
        (("cadre_addrs",), [4001]),
        (("identity",), []),
        (("identity",), "Bob"),
        (("identity",), None),
    ],
)
def test_contact_strict_types(path: tuple[str, ...], value: Any) -> None:
    assert_malformed(with_path(contact(), path, value))


@pytest.mark.parametrize("value", ["1.5", "1", True, False, [1], {"s": 1}])
def test_retry_after_is_a_number_not_a_string_or_bool(value: Any) -> None:
    assert_malformed({**rejected(), "retry_after_s": value})


@pytest.mark.parametrize("value", [0, 0.0, 1, 2.5, 86_400, None])
def test_retry_after_accepts_numbers_in_range_and_null(value: float | None) -> None:
    frame = decode({**rejected(), "retry_after_s": value})
    assert isinstance(frame, Rejected)
    assert frame.retry_after_s == value


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), float("-inf"), -1, -0.001, 86_400.5, 1e400],
    ids=["nan", "inf", "-inf", "-1", "-0.001", "over-a-day", "1e400"],
)
def test_retry_after_rejects_non_finite_negative_and_huge(value: float) -> None:
    assert_malformed({**rejected(), "retry_after_s": value})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_retry_after_rejected_in_python_too(value: float) -> None:
    with pytest.raises(ValidationError):
        Rejected(code=RejectionCode.BUSY, retry_after_s=value)


@pytest.mark.parametrize("type_", ["", "Contact", "ACK", "hello", "reject", " ack"])
def test_unknown_type_is_malformed(type_: str) -> None:
    assert_malformed({**ack(), "type": type_})


def test_type_of_another_frame_is_malformed() -> None:
    assert_malformed({**ack(), "type": "rejected"})
    assert_malformed({**contact(), "type": "accepted"})


# --------------------------------------------------------------------------- rejection codes


@pytest.mark.parametrize("code", list(RejectionCode))
def test_every_rejection_code_decodes(code: RejectionCode) -> None:
    frame = decode({"type": "rejected", "code": code.value, "retry_after_s": None})
    assert isinstance(frame, Rejected)
    assert frame.code is code


@pytest.mark.parametrize("code", ["BUSY", "nope", "", "busy "])
def test_unknown_rejection_code_is_malformed(code: str) -> None:
    assert_malformed({**rejected(), "code": code})


def test_rejection_codes_are_those_of_the_protocol() -> None:
    assert {c.value for c in RejectionCode} == {
        "busy",
        "rate_limited",
        "shutting_down",
        "malformed",
        "frame_too_large",
        "invalid_token",
        "identity_rejected",
        "role_mismatch",
        "provision_failed",
        "timeout",
        "internal_error",
    }


# --------------------------------------------------------------------------- token


@pytest.mark.parametrize("token", ["x", "x" * MAX_TOKEN_CHARS, "é" * MAX_TOKEN_CHARS, "🦊" * 512])
def test_token_within_bounds(token: str) -> None:
    frame = decode({**contact(), "token": token})
    assert isinstance(frame, Contact)
    assert frame.token == token


@pytest.mark.parametrize("token", ["", "x" * (MAX_TOKEN_CHARS + 1), "é" * 513])
def test_token_out_of_bounds(token: str) -> None:
    assert_malformed({**contact(), "token": token})


def test_token_bound_is_that_of_the_protocol() -> None:
    assert MAX_TOKEN_CHARS == 512


# --------------------------------------------------------------------------- identity


def _identity_of_size(size: int, char: str = "x") -> dict[str, Any]:
    overhead = len(b'{"k":""}')
    width = len(char.encode())
    assert (size - overhead) % width == 0
    identity = {"k": char * ((size - overhead) // width)}
    assert len(json.dumps(identity, separators=(",", ":"), ensure_ascii=False).encode()) == size
    return identity


def _nested(levels: int, kind: str, leaf: Any = 1) -> dict[str, Any]:
    """An identity whose longest path, from the identity object down to a leaf value (both
    included), has ``levels`` values; ``kind`` is the container used in between."""
    if levels == 1:
        return {}
    value: Any = leaf
    for _ in range(levels - 2):
        value = [value] if kind == "list" else {"k": value}
    return {"k": value}


def test_identity_bounds_are_those_of_the_protocol() -> None:
    assert MAX_IDENTITY_BYTES == 8 * 1024


@pytest.mark.parametrize("char", ["x", "é"])
def test_identity_at_8_kib_is_accepted(char: str) -> None:
    identity = _identity_of_size(MAX_IDENTITY_BYTES, char)
    frame = decode({**contact(), "identity": identity})
    assert isinstance(frame, Contact)
    assert frame.identity == identity


@pytest.mark.parametrize(("size", "char"), [(MAX_IDENTITY_BYTES + 1, "x"), (8194, "é")])
def test_identity_over_8_kib_is_malformed(size: int, char: str) -> None:
    assert_malformed({**contact(), "identity": _identity_of_size(size, char)})


def test_identity_size_counts_utf8_bytes_not_characters() -> None:
    # 4100 two-byte characters: under 8 KiB in characters, over it in bytes.
    assert_malformed({**contact(), "identity": {"k": "é" * 4100}})


@pytest.mark.parametrize("leaf", [1, "s", None, [], {}], ids=repr)
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_identity_nesting_limit(kind: str, leaf: Any) -> None:
    assert MAX_IDENTITY_DEPTH == 16
    ok = decode({**contact(), "identity": _nested(MAX_IDENTITY_DEPTH, kind, leaf)})
    assert isinstance(ok, Contact)
    assert_malformed({**contact(), "identity": _nested(MAX_IDENTITY_DEPTH + 1, kind, leaf)})
    assert_malformed({**contact(), "identity": _nested(400, kind, leaf)})


def test_identity_nesting_limit_in_python_too() -> None:
    with pytest.raises(ValidationError):
        Contact(
            token="t",
            party_id=PEER_B,
            identity=_nested(MAX_IDENTITY_DEPTH + 1, "dict"),
            cadre_addrs=[],
        )


def test_identity_may_hold_any_json_value() -> None:
    identity = {"s": "x", "i": -7, "big": 10**30, "f": 0.25, "b": False, "n": None, "l": [[], {}]}
    frame = decode({**contact(), "identity": identity})
    assert isinstance(frame, Contact)
    assert frame.identity == identity


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_identity_with_non_finite_number_is_malformed(literal: str) -> None:
    raw = (
        f'{{"type":"contact","token":"t","party_id":"{PEER_B}",'
        f'"identity":{{"score":{literal}}},"cadre_addrs":[]}}'
    ).encode()
    with pytest.raises(RemoteProtocolError) as exc_info:
        decode_frame_body(raw)
    assert exc_info.value.code is RejectionCode.MALFORMED


def test_identity_with_non_finite_number_refused_in_python() -> None:
    with pytest.raises(ValidationError):
        Contact(token="t", party_id=PEER_B, identity={"score": float("nan")}, cadre_addrs=[])


# --------------------------------------------------------------------------- cadre_addrs

CADRE_FRAMES = ["contact", "accepted_stock", "accepted_foil"]


@pytest.mark.parametrize("name", CADRE_FRAMES)
def test_cadre_addrs_up_to_16(name: str) -> None:
    addrs = [f"/ip4/10.0.0.{i}/tcp/4001" for i in range(MAX_CADRE_ADDRS)]
    frame = decode({**VALID[name](), "cadre_addrs": addrs})
    assert list(frame.cadre_addrs) == addrs  # type: ignore[union-attr]
    assert decode({**VALID[name](), "cadre_addrs": []}).cadre_addrs == []  # type: ignore[union-attr]
    assert_malformed({**VALID[name](), "cadre_addrs": [*addrs, "/ip4/10.0.1.1/tcp/1"]})


def test_cadre_bound_is_that_of_the_protocol() -> None:
    assert MAX_CADRE_ADDRS == 16


@pytest.mark.parametrize(
    "addr",
    [
        "/ip4/127.0.0.1/tcp/4001",
        "/ip6/::1/udp/4001/quic-v1",
        "/dns4/example.com/tcp/443/wss",
        f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER_A}",
    ],
)
def test_valid_multiaddrs_are_accepted(addr: str) -> None:
    frame = decode({**contact(), "cadre_addrs": [addr]})
    assert isinstance(frame, Contact)
    assert frame.cadre_addrs == [addr]


@pytest.mark.parametrize("name", CADRE_FRAMES)
@pytest.mark.parametrize(
    "addr",
    [
        "",
        "not a multiaddr",
        "/ip4/999.0.0.1/tcp/1",
        "/ip4/127.0.0.1/tcp/70000",
        "/ip4/127.0.0.1/tcp",
        "/p2p/not-a-peer-id",
        "/bogus/1",
        "/ip4/127.0.0.1/tcp/1/" + "x" * 600,
    ],
)
def test_invalid_multiaddr_is_malformed(name: str, addr: str) -> None:
    assert_malformed({**VALID[name](), "cadre_addrs": ["/ip4/10.0.0.1/tcp/1", addr]})


# --------------------------------------------------------------------------- session_id

SESSION_FRAMES = ["accepted_stock", "accepted_foil", "provisioned", "ack"]


@pytest.mark.parametrize("name", SESSION_FRAMES)
@pytest.mark.parametrize(
    "session_id", ["a" * 16, "Z" * 64, "0123456789-_abcXYZ", "-" * 16, "_" * 20]
)
def test_session_id_within_bounds(name: str, session_id: str) -> None:
    frame = decode({**VALID[name](), "session_id": session_id})
    assert frame.session_id == session_id  # type: ignore[union-attr]


@pytest.mark.parametrize("name", SESSION_FRAMES)
@pytest.mark.parametrize(
    "session_id",
    [
        "",
        "a" * 15,
        "a" * 65,
        "a" * 15 + "=",
        "a" * 15 + "+",
        "a" * 15 + "/",
        "a" * 15 + ".",
        "a" * 15 + " ",
        "a" * 15 + "é",
        "a" * 16 + "\n",
        "\n" + "a" * 16,
    ],
)
def test_session_id_out_of_bounds(name: str, session_id: str) -> None:
    assert_malformed({**VALID[name](), "session_id": session_id})


# --------------------------------------------------------------------------- peer ids

PARTY_PATHS = [
    pytest.param("contact", ("party_id",), id="contact.party_id"),
    pytest.param("accepted_foil", ("party_id",), id="accepted.party_id"),
    pytest.param(
        "provisioned", ("provision", "tally", "stock_party_id"), id="tally.stock_party_id"
    ),
    pytest.param("provisioned", ("provision", "tally", "foil_party_id"), id="tally.foil_party_id"),
]


@pytest.mark.parametrize(("name", "path"), PARTY_PATHS)
@pytest.mark.parametrize(
    "peer", [PEER_A, "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "1", "z" * 128]
)
def test_party_id_base58_accepted(name: str, path: tuple[str, ...], peer: str) -> None:
    decode(with_path(VALID[name](), path, peer))


@pytest.mark.parametrize(("name", "path"), PARTY_PATHS)
@pytest.mark.parametrize(
    "peer",
    ["", "0abc", "Oabc", "Iabc", "labc", "abc+", "abc/", "abc=", "abc def", "z" * 129, "é"],
)
def test_party_id_not_base58_is_malformed(name: str, path: tuple[str, ...], peer: str) -> None:
    assert_malformed(with_path(VALID[name](), path, peer))


# --------------------------------------------------------------------------- provision rule


def test_accepted_stock_without_provision_is_malformed() -> None:
    assert_malformed({**accepted_stock(), "provision": None})


def test_accepted_foil_with_provision_is_malformed() -> None:
    assert_malformed({**accepted_foil(), "provision": provision()})


def test_accepted_provision_may_not_be_omitted() -> None:
    assert_malformed(without_path(accepted_foil(), ("provision",)))


def test_provisioned_requires_a_provision() -> None:
    assert_malformed({**provisioned(), "provision": None})


def test_provision_rule_in_python() -> None:
    prov = Provision.model_validate(provision())
    Accepted(
        session_id=SESSION_ID, inviter_role="stock", party_id=PEER_A, cadre_addrs=[], provision=prov
    )
    Accepted(
        session_id=SESSION_ID, inviter_role="foil", party_id=PEER_A, cadre_addrs=[], provision=None
    )
    with pytest.raises(ValidationError):
        Accepted(
            session_id=SESSION_ID,
            inviter_role="stock",
            party_id=PEER_A,
            cadre_addrs=[],
            provision=None,
        )
    with pytest.raises(ValidationError):
        Accepted(
            session_id=SESSION_ID,
            inviter_role="foil",
            party_id=PEER_A,
            cadre_addrs=[],
            provision=prov,
        )


@pytest.mark.parametrize("role", ["STOCK", "vendor", "", None])
def test_role_must_be_stock_or_foil(role: Any) -> None:
    assert_malformed({**accepted_foil(), "inviter_role": role})
    assert_malformed(with_path(provisioned(), ("provision", "tally", "provisioner_role"), role))


# --------------------------------------------------------------------------- tally and database


@pytest.mark.parametrize(
    ("path", "limit"),
    [
        (("provision", "tally", "tally_id"), 128),
        (("provision", "database", "endpoint"), 1024),
        (("provision", "database", "credentials_ref"), 256),
    ],
)
def test_provision_string_bounds(path: tuple[str, ...], limit: int) -> None:
    decode(with_path(provisioned(), path, "x"))
    decode(with_path(provisioned(), path, "x" * limit))
    assert_malformed(with_path(provisioned(), path, ""))
    assert_malformed(with_path(provisioned(), path, "x" * (limit + 1)))


CREATED_AT_PATH = ("provision", "tally", "created_at")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-17T12:30:00Z", datetime(2024, 5, 17, 12, 30, tzinfo=UTC)),
        ("2024-05-17T12:30:00+00:00", datetime(2024, 5, 17, 12, 30, tzinfo=UTC)),
        ("2024-05-17T12:30:00.5Z", datetime(2024, 5, 17, 12, 30, 0, 500000, tzinfo=UTC)),
        ("2024-05-17T12:30:00.123456Z", datetime(2024, 5, 17, 12, 30, 0, 123456, tzinfo=UTC)),
    ],
)
def test_created_at_utc_text_is_accepted(text: str, expected: datetime) -> None:
    frame = decode(with_path(provisioned(), CREATED_AT_PATH, text))
    assert isinstance(frame, Provisioned)
    created = frame.provision.tally.created_at
    assert created == expected
    assert created.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value",
    [
        "2024-05-17T12:30:00+01:00",
        "2024-05-17T12:30:00-05:00",
        "2024-05-17T12:30:00+00:01",
        "2024-05-17T12:30:00",
        "2024-05-17",
        "2024-05-17 12:30:00Z",
        "12:30:00Z",
        "1715949000",
        "",
        "yesterday",
        1715949000,
        1715949000.5,
        None,
        True,
        {"iso": CREATED_AT},
    ],
)
def test_created_at_must_be_rfc3339_utc_text(value: Any) -> None:
    assert_malformed(with_path(provisioned(), CREATED_AT_PATH, value))


@pytest.mark.parametrize(
    ("text", "serialized"),
    [
        ("2024-05-17T12:30:00Z", "2024-05-17T12:30:00Z"),
        ("2024-05-17T12:30:00+00:00", "2024-05-17T12:30:00Z"),
        ("2024-05-17T12:30:00.250Z", "2024-05-17T12:30:00.250000Z"),
    ],
)
def test_created_at_serializes_with_z(text: str, serialized: str) -> None:
    frame = decode(with_path(provisioned(), CREATED_AT_PATH, text))
    wire = json.loads(strip_prefix(encode_frame(frame)))
    assert wire["provision"]["tally"]["created_at"] == serialized


def _tally(created_at: Any) -> Tally:
    return Tally(
        tally_id="t",
        provisioner_role="stock",
        stock_party_id=PEER_A,
        foil_party_id=PEER_B,
        created_at=created_at,
    )


def test_created_at_in_python_must_be_aware_utc() -> None:
    assert _tally(datetime(2024, 1, 1, tzinfo=UTC)).model_dump(mode="json")["created_at"] == (
        "2024-01-01T00:00:00Z"
    )
    assert _tally(datetime(2024, 1, 1, tzinfo=timezone(timedelta(0)))).created_at == datetime(
        2024, 1, 1, tzinfo=UTC
    )
    for bad in (
        datetime(2024, 1, 1),
        datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=2))),
        1704067200,
    ):
        with pytest.raises(ValidationError):
            _tally(bad)


# --------------------------------------------------------------------------- models


def test_frames_are_frozen() -> None:
    frame = Ack(session_id=SESSION_ID)
    with pytest.raises(ValidationError):
        frame.session_id = "b" * 16  # type: ignore[misc]


def test_unknown_field_refused_in_python() -> None:
    with pytest.raises(ValidationError):
        Ack(session_id=SESSION_ID, extra=1)  # type: ignore[call-arg]


def test_python_construction_is_strict() -> None:
    with pytest.raises(ValidationError):
        Rejected(code=RejectionCode.BUSY, retry_after_s="1.5")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Contact(token=5, party_id=PEER_B, identity={}, cadre_addrs=[])  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        DatabaseInfo(endpoint="e", credentials_ref=7)  # type: ignore[arg-type]


def test_type_field_is_fixed_per_model() -> None:
    assert Ack(session_id=SESSION_ID).type == "ack"
    with pytest.raises(ValidationError):
        Ack(type="rejected", session_id=SESSION_ID)  # type: ignore[arg-type]
