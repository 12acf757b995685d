"""The bootstrap link: ``taleus:bootstrap:<base64url of the JSON, no padding>`` (PROTOCOL.md)."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taleus_bootstrap import (
    LINK_PREFIX,
    BootstrapLink,
    LinkContentError,
    LinkError,
    LinkExpiredError,
    LinkFormatError,
)
from taleus_bootstrap._link import MAX_LINK_CHARS

from .strategies import base_multiaddrs, peer_ids

PEER_A = "12D3KooWDSzhRqU2agPZGfN42irroipZotydBWxLhLoJP9ATU7dq"
PEER_B = "12D3KooWDUuAp3AUT2pT3UiMHbgqsdtSsvD7Et8Hoc6Rzp3yoc56"
EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)
ADDR = f"/ip4/192.0.2.1/tcp/4001/p2p/{PEER_A}"
PAYLOAD_ALPHABET = re.compile(r"^[A-Za-z0-9_-]+$")


def make_link(**overrides: Any) -> BootstrapLink:
    fields: dict[str, Any] = {
        "responder_addrs": [ADDR, f"/ip6/2001:db8::1/udp/4001/quic-v1/p2p/{PEER_A}"],
        "token": "invite-7f3a",
        "expires_at": EXPIRES,
        "inviter_role": "stock",
        "identity_requirements": None,
    }
    fields.update(overrides)
    return BootstrapLink(**fields)


def link_json(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(make_link().model_dump_json())
    value.update(overrides)
    return value


def text_of(payload: bytes | Any) -> str:
    """A link text carrying ``payload`` (bytes as they are, anything else as JSON)."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload, allow_nan=True).encode()
    return LINK_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --------------------------------------------------------------------------- round trip


def test_encode_form() -> None:
    text = make_link().encode()
    assert LINK_PREFIX == "taleus:bootstrap:"
    assert text.startswith("taleus:bootstrap:")
    payload = text[len(LINK_PREFIX) :]
    assert PAYLOAD_ALPHABET.match(payload)
    assert "=" not in text
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert list(decoded) == [
        "responder_addrs",
        "token",
        "expires_at",
        "inviter_role",
        "identity_requirements",
    ]
    assert decoded["expires_at"] == "2030-01-01T00:00:00Z"
    assert decoded["identity_requirements"] is None
    assert BootstrapLink.decode(text) == make_link()


def test_surrounding_whitespace_is_tolerated() -> None:
    text = make_link().encode()
    assert BootstrapLink.decode(f"  {text}\n") == make_link()


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def links(draw: st.DrawFn) -> BootstrapLink:
    peer = draw(peer_ids)
    bases = draw(st.lists(base_multiaddrs, min_size=1, max_size=8))
    return BootstrapLink(
        responder_addrs=[f"{base}/p2p/{peer}" for base in bases],
        # Sizes keep every drawn link well inside MAX_LINK_CHARS once encoded.
        token=draw(st.text(min_size=1, max_size=64)),
        expires_at=draw(st.datetimes(timezones=st.just(UTC))),
        inviter_role=draw(st.sampled_from(["stock", "foil"])),
        identity_requirements=draw(
            st.none() | st.dictionaries(st.text(max_size=6), json_values, max_size=2)
        ),
    )


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(link=links())
def test_decode_encode_round_trip(link: BootstrapLink) -> None:
    text = link.encode()
    assert text.startswith(LINK_PREFIX)
    assert PAYLOAD_ALPHABET.match(text[len(LINK_PREFIX) :])
    assert "=" not in text
    assert len(text) <= MAX_LINK_CHARS
    decoded = BootstrapLink.decode(text)
    assert decoded == link
    assert decoded.encode() == text
    assert decoded.inviter_peer_id == link.responder_addrs[0].rsplit("/", 1)[1]


def test_link_naming_two_peers_is_refused_up_front() -> None:
    addrs = [ADDR, f"/ip4/192.0.2.2/tcp/4001/p2p/{PEER_B}"]
    with pytest.raises(ValueError, match="same peer"):
        make_link(responder_addrs=addrs)


def test_a_link_too_big_for_its_text_form_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="text form"):
        make_link(identity_requirements={"note": "x" * 4000})


# --------------------------------------------------------------------------- format errors


def test_error_hierarchy() -> None:
    for error in (LinkFormatError, LinkContentError, LinkExpiredError):
        assert issubclass(error, LinkError)
        assert issubclass(error, ValueError)
    assert not issubclass(LinkFormatError, LinkContentError)
    assert not issubclass(LinkContentError, LinkFormatError)


@pytest.mark.parametrize("value", [None, 5, b"taleus:bootstrap:e30", ["taleus:bootstrap:e30"]])
def test_non_string_is_a_format_error(value: Any) -> None:
    with pytest.raises(LinkFormatError):
        BootstrapLink.decode(value)


def _payload() -> str:
    return make_link().encode()[len(LINK_PREFIX) :]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("taleus:bootstrap:", id="prefix-only"),
        pytest.param("taleus:bootstrap", id="prefix-without-colon"),
        pytest.param("TALEUS:BOOTSTRAP:" + "e30", id="upper-case-prefix"),
        pytest.param("taleus:invite:e30", id="other-prefix"),
        pytest.param("https://example.com/taleus:bootstrap:e30", id="url"),
        pytest.param("x" + LINK_PREFIX + "e30", id="leading-garbage"),
    ],
)
def test_wrong_prefix_is_a_format_error(text: str) -> None:
    with pytest.raises(LinkFormatError):
        BootstrapLink.decode(text)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda p: p + "=", id="padding-1"),
        pytest.param(lambda p: p + "==", id="padding-2"),
        pytest.param(lambda p: p[:8] + "+" + p[9:], id="plus"),
        pytest.param(lambda p: p[:8] + "/" + p[9:], id="slash"),
        pytest.param(lambda p: p[:8] + "." + p[9:], id="dot"),
        pytest.param(lambda p: p[:8] + " " + p[9:], id="inner-space"),
        pytest.param(lambda p: p[:8] + "\n" + p[9:], id="inner-newline"),
        pytest.param(lambda p: p[:8] + "é" + p[9:], id="non-ascii"),
        pytest.param(lambda p: p[:8] + "%2B" + p[9:], id="percent-escape"),
        pytest.param(lambda p: p[: 4 * (len(p) // 4)] + "A", id="impossible-length"),
    ],
)
def test_bad_alphabet_or_padding_is_a_format_error(mangle: Any) -> None:
    with pytest.raises(LinkFormatError):
        BootstrapLink.decode(LINK_PREFIX + mangle(_payload()))


def test_over_long_text_is_a_format_error() -> None:
    with pytest.raises(LinkFormatError):
        BootstrapLink.decode(LINK_PREFIX + "A" * (MAX_LINK_CHARS + 1))
    with pytest.raises(LinkFormatError):
        BootstrapLink.decode(LINK_PREFIX + "A" * 10_000_000)


# --------------------------------------------------------------------------- content errors


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe\xfd", id="not-utf8"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b"null", id="null"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b'{"responder_addrs": [', id="truncated"),
    ],
)
def test_bad_json_is_a_content_error(payload: bytes) -> None:
    with pytest.raises(LinkContentError):
        BootstrapLink.decode(text_of(payload))


@pytest.mark.parametrize(
    "field", ["responder_addrs", "token", "expires_at", "inviter_role", "identity_requirements"]
)
def test_missing_field_is_a_content_error(field: str) -> None:
    value = link_json()
    del value[field]
    if field == "identity_requirements":
        # Optional in the model: omitting it means "no requirements".
        assert BootstrapLink.decode(text_of(value)) == make_link()
        return
    with pytest.raises(LinkContentError):
        BootstrapLink.decode(text_of(value))


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"extra": 1}, id="unknown-field"),
        pytest.param({"token": ""}, id="empty-token"),
        pytest.param({"token": "x" * 513}, id="long-token"),
        pytest.param({"token": 5}, id="numeric-token"),
        pytest.param({"inviter_role": "vendor"}, id="bad-role"),
        pytest.param({"expires_at": "2030-01-01T00:00:00+01:00"}, id="non-utc-expiry"),
        pytest.param({"expires_at": "2030-01-01"}, id="date-only-expiry"),
        pytest.param({"expires_at": 1893456000}, id="epoch-expiry"),
        pytest.param({"identity_requirements": []}, id="requirements-not-object"),
        pytest.param({"responder_addrs": ADDR}, id="addrs-not-list"),
        pytest.param({"responder_addrs": []}, id="zero-addrs"),
        pytest.param({"responder_addrs": [ADDR] * 9}, id="nine-addrs"),
        pytest.param({"responder_addrs": ["/ip4/192.0.2.1/tcp/4001"]}, id="no-p2p"),
        pytest.param(
            {"responder_addrs": [f"/p2p/{PEER_A}/ip4/192.0.2.1/tcp/1"]}, id="p2p-not-last"
        ),
        pytest.param(
            {"responder_addrs": [f"/ip4/192.0.2.1/tcp/1/p2p/{PEER_B}/p2p-circuit/p2p/{PEER_A}"]},
            id="two-p2p",
        ),
        pytest.param({"responder_addrs": ["garbage"]}, id="not-multiaddr"),
        pytest.param({"responder_addrs": ["/ip4/192.0.2.1/tcp/1/p2p/0OIl"]}, id="bad-peer-id"),
        pytest.param(
            {"responder_addrs": [ADDR, f"/ip4/192.0.2.2/tcp/4001/p2p/{PEER_B}"]},
            id="different-peers",
        ),
    ],
)
def test_bad_content_is_a_content_error(overrides: dict[str, Any]) -> None:
    with pytest.raises(LinkContentError):
        BootstrapLink.decode(text_of(link_json(**overrides)))


def test_eight_addresses_are_accepted() -> None:
    addrs = [f"/ip4/192.0.2.{i}/tcp/4001/p2p/{PEER_A}" for i in range(1, 9)]
    link = BootstrapLink.decode(text_of(link_json(responder_addrs=addrs)))
    assert link.responder_addrs == addrs
    assert link.inviter_peer_id == PEER_A


def test_non_finite_requirement_is_a_content_error() -> None:
    with pytest.raises(LinkContentError):
        BootstrapLink.decode(text_of(link_json(identity_requirements={"min": float("nan")})))


# --------------------------------------------------------------------------- properties


def test_is_expired() -> None:
    link = make_link()
    assert not link.is_expired(EXPIRES - timedelta(microseconds=1))
    assert link.is_expired(EXPIRES)
    assert link.is_expired(EXPIRES + timedelta(days=1))
    plus_two = timezone(timedelta(hours=2))
    assert not link.is_expired(datetime(2030, 1, 1, 1, 59, tzinfo=plus_two))
    assert link.is_expired(datetime(2030, 1, 1, 2, 0, tzinfo=plus_two))


def test_invitee_role_is_the_other_role() -> None:
    assert make_link(inviter_role="stock").invitee_role == "foil"
    assert make_link(inviter_role="foil").invitee_role == "stock"


def test_inviter_peer_id() -> None:
    assert make_link().inviter_peer_id == PEER_A
    link = make_link(responder_addrs=[f"/dns4/inviter.example/tcp/443/wss/p2p/{PEER_B}"])
    assert link.inviter_peer_id == PEER_B


def test_identity_requirements_round_trip() -> None:
    requirements = {"kyc": {"level": 2, "countries": ["CH", "DE"]}, "note": None, "ok": True}
    link = make_link(identity_requirements=requirements, inviter_role="foil")
    decoded = BootstrapLink.decode(link.encode())
    assert decoded.identity_requirements == requirements
    assert decoded == link
