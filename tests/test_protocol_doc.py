"""Keep ``docs/protocol.md`` honest: its worked examples and tables must match the code.

The doc marks what is checked here with HTML comments: ``<!-- example:NAME -->`` and
``<!-- frame-json:NAME -->`` precede a fenced block, ``<!-- table:NAME -->`` precedes a table.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from taleus_bootstrap import (
    INVITEE_TRANSITIONS,
    INVITER_TRANSITIONS,
    LINK_PREFIX,
    PROTOCOL_ID,
    Ack,
    AnyFrame,
    BootstrapLink,
    Contact,
    InviteeConfig,
    InviteeState,
    InviterState,
    ManagerConfig,
    Rejected,
    RejectionCode,
    decode_frame_body,
    encode_frame,
)

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

INVITER_PEER = "12D3KooWDSzhRqU2agPZGfN42irroipZotydBWxLhLoJP9ATU7dq"
INVITEE_PEER = "12D3KooWDUuAp3AUT2pT3UiMHbgqsdtSsvD7Et8Hoc6Rzp3yoc56"

FRAME_EXAMPLES: dict[str, AnyFrame] = {
    "ack": Ack(session_id="Xk3vQ9mT2pLr8sWz4bNc1A"),
    "rejected-rate-limited": Rejected(code=RejectionCode.RATE_LIMITED, retry_after_s=2.5),
    "rejected-invalid-token": Rejected(code=RejectionCode.INVALID_TOKEN, retry_after_s=None),
    "contact": Contact(
        token="tok_3xAmpl3-0nce",
        party_id=INVITEE_PEER,
        identity={"email": "bob@example.org"},
        cadre_addrs=["/ip4/198.51.100.20/tcp/4001"],
    ),
}

LINK_EXAMPLE = BootstrapLink(
    responder_addrs=[
        f"/ip4/203.0.113.7/tcp/4001/p2p/{INVITER_PEER}",
        f"/dns4/inviter.example.org/tcp/4001/p2p/{INVITER_PEER}",
    ],
    token="tok_3xAmpl3-0nce",
    expires_at=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
    inviter_role="stock",
    identity_requirements={"email": True},
)

FRAME_TYPES = {"contact", "accepted", "provisioned", "ack", "rejected"}


# -- reading the doc ----------------------------------------------------------------------


@cache
def doc() -> str:
    return DOC_PATH.read_text(encoding="utf-8")


def markers(kind: str) -> list[str]:
    """The names of every ``<!-- kind:NAME -->`` marker, in document order."""
    return re.findall(rf"<!-- {re.escape(kind)}:([\w-]+) -->", doc())


def _after_marker(kind: str, name: str) -> list[str]:
    marker = f"<!-- {kind}:{name} -->"
    assert doc().count(marker) == 1, f"{marker} must appear exactly once in {DOC_PATH.name}"
    return doc().split(marker, 1)[1].splitlines()[1:]


def block_after(kind: str, name: str) -> str:
    """The contents of the fenced block that directly follows the marker."""
    lines = _after_marker(kind, name)
    while lines and not lines[0].strip():
        lines.pop(0)
    assert lines and lines[0].startswith("```"), f"no fenced block after {kind}:{name}"
    body: list[str] = []
    for line in lines[1:]:
        if line.startswith("```"):
            return "\n".join(body)
        body.append(line)
    raise AssertionError(f"unterminated fenced block after {kind}:{name}")


def table_after(name: str) -> list[list[str]]:
    """The body rows of the markdown table that follows ``<!-- table:NAME -->``, cells unquoted."""
    rows: list[list[str]] = []
    for line in _after_marker("table", name):
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows.append([cell.replace("`", "") for cell in cells])
    assert len(rows) > 2, f"table:{name} has no rows"
    assert set("".join(rows[1])) <= set("-: "), f"table:{name} lacks a header separator"
    return rows[2:]


def hex_dump_bytes(dump: str) -> bytes:
    """Bytes of an ``offset  hex bytes  |ascii|`` dump; checks offsets are contiguous."""
    data = bytearray()
    for line in dump.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", 1)[0].split()
        offset, octets = int(fields[0], 16), fields[1:]
        assert offset == len(data), f"offset {fields[0]} out of sequence"
        assert all(re.fullmatch(r"[0-9a-f]{2}", octet) for octet in octets), line
        data += bytes.fromhex("".join(octets))
    return bytes(data)


# -- (1) worked frame examples ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FRAME_EXAMPLES))
def test_frame_example_bytes_equal_the_encoder(name: str) -> None:
    documented = hex_dump_bytes(block_after("example", name))
    assert documented == encode_frame(FRAME_EXAMPLES[name])
    assert decode_frame_body(documented[1 if documented[0] < 0x80 else 2 :]) == FRAME_EXAMPLES[name]


def test_every_worked_example_in_the_doc_is_checked() -> None:
    assert set(markers("example")) == set(FRAME_EXAMPLES) | {"link", "link-json"}


@pytest.mark.parametrize("name", markers("frame-json"))
def test_frame_json_examples_are_valid_frames(name: str) -> None:
    frame = decode_frame_body(block_after("frame-json", name).encode())
    assert name.split("-")[0] == frame.type


def test_every_frame_type_has_a_json_example() -> None:
    assert {name.split("-")[0] for name in markers("frame-json")} == FRAME_TYPES


# -- (2) the worked link example ----------------------------------------------------------


def link_text() -> str:
    return "".join(line.strip() for line in block_after("example", "link").splitlines())


def test_link_example_decodes_to_the_documented_values() -> None:
    link = BootstrapLink.decode(link_text())
    assert link == LINK_EXAMPLE
    assert link.responder_addrs == [
        f"/ip4/203.0.113.7/tcp/4001/p2p/{INVITER_PEER}",
        f"/dns4/inviter.example.org/tcp/4001/p2p/{INVITER_PEER}",
    ]
    assert link.inviter_peer_id == INVITER_PEER
    assert link.token == "tok_3xAmpl3-0nce"
    assert link.expires_at == datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert (link.inviter_role, link.invitee_role) == ("stock", "foil")
    assert link.identity_requirements == {"email": True}


def test_link_example_is_what_encode_produces_today() -> None:
    text = link_text()
    assert text == LINK_EXAMPLE.encode()
    assert f"({len(text)} characters" in doc()
    assert text.startswith(LINK_PREFIX)
    payload = text[len(LINK_PREFIX) :]
    assert "=" not in payload
    decoded_json = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    assert decoded_json == block_after("example", "link-json").strip()
    assert json.loads(decoded_json) == LINK_EXAMPLE.model_dump(mode="json")


# -- (3) rejection codes and states -------------------------------------------------------


def test_rejection_code_table_lists_every_code_once() -> None:
    codes = [row[0] for row in table_after("rejection-codes")]
    assert len(codes) == len(set(codes))
    assert set(codes) == {code.value for code in RejectionCode}


@pytest.mark.parametrize(
    "state", [*InviterState, *InviteeState], ids=lambda s: f"{type(s).__name__}.{s.value}"
)
def test_every_state_appears_in_the_doc(state: InviterState | InviteeState) -> None:
    assert f"`{state.value}`" in doc()


# -- (4) transition tables ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "table", "states"),
    [
        ("inviter-transitions", INVITER_TRANSITIONS, InviterState),
        ("invitee-transitions", INVITEE_TRANSITIONS, InviteeState),
    ],
)
def test_transition_tables_match_the_code(
    name: str, table: Mapping[tuple[StrEnum, StrEnum], StrEnum], states: type[StrEnum]
) -> None:
    rows = [tuple(row) for row in table_after(name)]
    assert all(len(row) == 3 for row in rows), f"table:{name} must have 3 columns"
    assert len(rows) == len(set(rows)), f"table:{name} has duplicate rows"
    expected = {
        (state.value, trigger.value, target.value) for (state, trigger), target in table.items()
    }
    assert set(rows) == expected
    assert {cell for row in rows for cell in (row[0], row[2])} == {s.value for s in states}


# -- extras: protocol id and defaults -----------------------------------------------------


def test_protocol_id_and_link_prefix_are_documented() -> None:
    assert f"`{PROTOCOL_ID}`" in doc()
    assert f"`{LINK_PREFIX}`" in doc()


def _number(text: str) -> float:
    return float(re.sub(r"[^0-9.]", "", text.split("(")[0]))


def test_documented_defaults_match_the_configs() -> None:
    configs: dict[str, list[Any]] = {"inviter": [ManagerConfig()], "invitee": [InviteeConfig()]}
    configs["both"] = configs["inviter"] + configs["invitee"]
    checked = 0
    for setting, default, side, *_ in table_after("defaults"):
        names = [name.strip() for name in setting.split("/")]
        values = [_number(value) for value in default.split("/")]
        assert len(names) == len(values), setting
        for name, value in zip(names, values, strict=True):
            if name.isupper():  # a module constant, not a config field
                continue
            for config in configs[side]:
                assert float(getattr(config, name)) == value, f"{name} of {type(config).__name__}"
                checked += 1
    assert checked >= 15


def section(heading: str) -> str:
    """The text of the section whose heading line starts with ``heading``, up to the next
    heading of any level."""
    found = re.search(rf"^{re.escape(heading)}.*?\n(.*?)(?=^#)", doc(), re.M | re.S)
    assert found, heading
    return found.group(1)


def test_every_peer_wait_in_the_doc_is_the_codes() -> None:
    """Sections 6.6, 7.3, 7.4 and 9 state one wait for a frame the peer sends after its own
    hook calls: ``provision_timeout`` + 2 x ``step_timeout``, 20 s by default."""
    times = "\N{MULTIPLICATION SIGN}"
    config = ManagerConfig()
    wait = config.provision_timeout + 2 * config.step_timeout
    assert wait == InviteeConfig().provision_timeout + 2 * InviteeConfig().step_timeout
    timeout_flow = section("### 6.6")
    assert "provision_timeout + 2 x step_timeout" in timeout_flow
    assert f"({wait:g} s) waiting for the ack" in timeout_flow
    assert f"`provision_timeout` + 2 {times} `step_timeout`" in section("### 7.3")
    assert section("### 7.4").count(f"(2 {times} `step_timeout` + `provision_timeout`:") == 2
    assert f"`provision_timeout` + 2 {times} `step_timeout` ({wait:g} s by default)" in section(
        "## 9."
    )


async def test_the_stock_inviter_waits_for_the_ack_as_section_6_6_says(
    autojump_clock: Any, nursery: Any, memory_manager: Any, inviter_backend: Any
) -> None:
    """Section 6.6's flow with the default configuration: an invitee that never acknowledges
    gets ``rejected{timeout}`` the documented number of seconds after ``accepted``, and the
    inviter ends in TIMEOUT."""
    import trio

    from taleus_bootstrap import Accepted
    from taleus_bootstrap.testing import read_frame, write_frame

    from .test_session_memory import contact, finish, start

    stated = float(re.findall(r"\((\d+) s\) waiting for the ack", section("### 6.6"))[0])
    manager = await memory_manager(ManagerConfig())
    running = await start(nursery, manager)
    await write_frame(running.client, contact(inviter_backend.tokens.mint("stock")))
    accepted = await read_frame(running.client)
    assert isinstance(accepted, Accepted) and accepted.provision is not None
    sent = trio.current_time()
    assert await read_frame(running.client) == Rejected(
        code=RejectionCode.TIMEOUT, retry_after_s=None
    )
    assert trio.current_time() - sent == pytest.approx(stated, abs=0.1)
    record = await finish(running)
    assert record.final_state == "TIMEOUT"
    assert inviter_backend.tokens.reservations_held == 0
    assert inviter_backend.provisioner.released == [accepted.provision.tally.tally_id]
