"""Hooks that raise, hang past their bound, or return invalid data, at each step, on either
side, over real libp2p: the session ends with the code docs/hooks.md names, the reservation and
any unacknowledged provision are released on both sides, and the audit trail says why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from taleus_bootstrap import (
    BootstrapError,
    InviteeConfig,
    ManagerConfig,
    RejectionCode,
    initiate_bootstrap,
    new_bootstrap_host,
    running_host,
)

from .adversary import serving
from .conftest import Backend
from .faults import Faulty

pytestmark = pytest.mark.libp2p

BOUND = 0.5
CONFIG = ManagerConfig(step_timeout=BOUND, provision_timeout=BOUND, cleanup_timeout=1.0)
INVITEE_CONFIG = InviteeConfig(step_timeout=2.0, provision_timeout=BOUND, cleanup_timeout=1.0)
REQUIREMENTS = {"name": True}

INTERNAL, TIMEOUT = RejectionCode.INTERNAL_ERROR, RejectionCode.TIMEOUT
PROVISION = RejectionCode.PROVISION_FAILED


@dataclass(frozen=True)
class Case:
    side: str  # whose hook misbehaves
    role: str  # the inviter's role
    hook: str  # token / identity / database / audit
    method: str
    mode: str
    code: RejectionCode | None  # None: the session completes all the same
    invalid: Any = "not what the contract asks for"

    def __str__(self) -> str:
        return f"{self.side}-{self.role}-{self.hook}.{self.method}-{self.mode}"


def _cases() -> list[Case]:
    cases = []
    for mode, code in (("raise", INTERNAL), ("hang", TIMEOUT), ("invalid", INTERNAL)):
        cases.append(Case("inviter", "stock", "token", "validate", mode, code))
        cases.append(Case("inviter", "stock", "identity", "validate", mode, code, invalid=1))
    for mode, code in (("raise", PROVISION), ("hang", TIMEOUT), ("invalid", PROVISION)):
        cases.append(Case("inviter", "stock", "database", "provision", mode, code))
        cases.append(Case("inviter", "foil", "database", "accept", mode, code, invalid="yes"))
        cases.append(Case("invitee", "foil", "database", "provision", mode, code))
        cases.append(Case("invitee", "stock", "database", "accept", mode, code, invalid="yes"))
    for mode, code in (("raise", INTERNAL), ("hang", TIMEOUT)):
        cases.append(Case("inviter", "foil", "token", "mark_used", mode, code))
        cases.append(Case("inviter", "stock", "audit", "log_events", mode, code))
        # After the last frame a failure cannot undo the tally: the session completes.
        cases.append(Case("inviter", "stock", "token", "mark_used", mode, None))
        cases.append(Case("inviter", "stock", "database", "commit", mode, None))
    return cases


def _during_exchange(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    # the batch written before the token hook, in the middle of the exchange
    return any(event.kind == "contact_received" for event in args[1])


def _hooks(backend: Backend, case: Case, side: str) -> dict[str, Any]:
    if case.side != side:
        return {}
    inner = getattr(backend, case.hook if case.hook != "token" else "tokens")
    when = _during_exchange if case.hook == "audit" else None
    faulty = Faulty(inner, case.method, case.mode, invalid=case.invalid, when=when)
    return {case.hook: faulty}


@pytest.mark.parametrize("case", _cases(), ids=str)
async def test_a_misbehaving_hook_ends_the_session_cleanly_on_both_sides(case: Case) -> None:
    inviter, invitee = Backend(), Backend()
    overrides = _hooks(inviter, case, "inviter")
    async with (
        serving(CONFIG, inviter, **overrides) as node,
        running_host(new_bootstrap_host()) as client,
    ):
        token = node.backend.tokens.mint(
            case.role,  # type: ignore[arg-type]
            identity_requirements=REQUIREMENTS if case.hook == "identity" else None,
        )
        hooks = invitee.invitee_hooks(**_hooks(invitee, case, "invitee"))
        error: BootstrapError | None = None
        try:
            await initiate_bootstrap(
                node.link(token, case.role),
                client,
                hooks=hooks,
                identity={"name": "Bob"},
                config=INVITEE_CONFIG,
            )
        except BootstrapError as exc:
            error = exc
        await node.manager.wait_idle()
        [record] = node.manager.history()

    events = node.backend.audit.for_session(record.session_id)
    token_record = node.backend.tokens.get(token)
    if case.code is None:
        assert error is None and record.final_state == "COMPLETED"
        # Audited as a HookError; the reservation of a failed post-ack mark_used stays held
        # (the SQL stores redeem it when its lease runs out), a failed commit releases nothing.
        [hook_error] = [e for e in events if e.kind == "hook_error"]
        assert hook_error.hook == f"{case.hook}.{case.method}"
        if case.method == "mark_used":
            assert token_record.reservations == {record.session_id}
        return

    assert error is not None and record.code == case.code, (error, record)
    if case.side == "inviter":
        assert error.code == case.code  # the invitee was told why
    # Released everywhere: no reservation, no use, no provision left on either side.
    assert (token_record.used, token_record.reservations) == (0, set())
    for party in (node.backend, invitee):
        assert not party.database.tallies and not party.database.accepted
        assert not party.database.committed
    # The audit trail says why: the rejection with its code (and the exception's type).
    rejections = [e for e in events if e.kind == "rejection"]
    assert case.code in {e.code for e in rejections}
    if case.side == "inviter" and case.mode == "raise" and case.hook != "audit":
        assert "InjectedFault" in {e.error_type for e in rejections}
