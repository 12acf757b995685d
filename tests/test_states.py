"""Walk both transition tables (PROTOCOL.md, "Session states"): plain sync tests, no I/O."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from taleus_bootstrap import (
    INVITEE_TRANSITIONS,
    INVITER_TRANSITIONS,
    IllegalTransition,
    InviteeState,
    InviterState,
    StateMachine,
    TransitionRecord,
    Trigger,
)

WALL = datetime(2024, 5, 17, 12, 0, tzinfo=UTC)
I = InviterState  # noqa: E741
B = InviteeState

SIDES = {
    "inviter": (INVITER_TRANSITIONS, InviterState, I.CREATED),
    "invitee": (INVITEE_TRANSITIONS, InviteeState, B.DIALING),
}
TERMINAL = {
    "inviter": {I.COMPLETED, I.FAILED, I.TIMEOUT},
    "invitee": {B.COMPLETED, B.FAILED, B.TIMEOUT},
}


def non_terminal(side: str) -> list[Any]:
    return [s for s in SIDES[side][1] if s not in TERMINAL[side]]


def successors(table: Mapping[tuple[Any, Trigger], Any], state: Any) -> set[Any]:
    return {target for (source, _), target in table.items() if source == state}


def reachable(table: Mapping[tuple[Any, Trigger], Any], start: Any) -> set[Any]:
    seen = {start}
    queue = deque([start])
    while queue:
        for nxt in successors(table, queue.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def run(
    table: Mapping[tuple[Any, Trigger], Any], initial: Any, triggers: list[Trigger]
) -> StateMachine[Any]:
    machine: StateMachine[Any] = StateMachine(table, initial, monotonic=0.0)
    for step, trigger in enumerate(triggers, start=1):
        machine.fire(trigger, monotonic=float(step), wall_time=WALL)
    return machine


# --------------------------------------------------------------------------- exhaustive walk

CELLS = [
    pytest.param(side, state, trigger, id=f"{side}:{state.value}:{trigger.value}")
    for side, (_, states, _) in SIDES.items()
    for state in states
    for trigger in Trigger
]


@pytest.mark.parametrize(("side", "state", "trigger"), CELLS)
def test_every_state_and_trigger(side: str, state: Any, trigger: Trigger) -> None:
    table, _, _ = SIDES[side]
    machine: StateMachine[Any] = StateMachine(table, state, monotonic=10.0)
    expected = table.get((state, trigger))
    assert machine.can_fire(trigger) is (expected is not None)
    if expected is None:
        with pytest.raises(IllegalTransition):
            machine.fire(trigger, monotonic=11.0, wall_time=WALL)
        assert machine.state is state
        assert machine.records == ()
    else:
        record = machine.fire(trigger, monotonic=11.5, wall_time=WALL)
        assert machine.state is expected
        assert record == TransitionRecord(
            seq=1,
            from_state=state.value,
            to_state=expected.value,
            trigger=trigger,
            monotonic=11.5,
            wall_time=WALL,
            time_in_previous_s=1.5,
        )
        assert machine.records == (record,)


@pytest.mark.parametrize("side", list(SIDES))
def test_table_only_names_this_sides_states(side: str) -> None:
    table, states, _ = SIDES[side]
    for (source, trigger), target in table.items():
        assert isinstance(source, states)
        assert isinstance(target, states)
        assert isinstance(trigger, Trigger)


@pytest.mark.parametrize("side", list(SIDES))
def test_failed_and_timeout_reachable_from_every_non_terminal_state(side: str) -> None:
    table, states, _ = SIDES[side]
    for state in non_terminal(side):
        assert table[(state, Trigger.REJECTED)] is states.FAILED
        assert table[(state, Trigger.TIMED_OUT)] is states.TIMEOUT


@pytest.mark.parametrize("side", list(SIDES))
def test_terminal_states_have_no_way_out(side: str) -> None:
    table, _, _ = SIDES[side]
    for state in TERMINAL[side]:
        assert successors(table, state) == set()
        machine: StateMachine[Any] = StateMachine(table, state, monotonic=0.0)
        assert machine.is_terminal
        for trigger in Trigger:
            assert not machine.can_fire(trigger)
            with pytest.raises(IllegalTransition):
                machine.fire(trigger, monotonic=1.0, wall_time=WALL)
            assert machine.state is state


@pytest.mark.parametrize("side", list(SIDES))
def test_non_terminal_states_are_not_terminal(side: str) -> None:
    table, _, _ = SIDES[side]
    for state in non_terminal(side):
        assert not StateMachine(table, state, monotonic=0.0).is_terminal


@pytest.mark.parametrize("side", list(SIDES))
def test_every_state_reachable_and_every_non_terminal_can_complete(side: str) -> None:
    table, states, initial = SIDES[side]
    assert reachable(table, initial) == set(states)
    for state in non_terminal(side):
        assert states.COMPLETED in reachable(table, state), state


@pytest.mark.parametrize("side", list(SIDES))
def test_table_is_read_only(side: str) -> None:
    table, states, initial = SIDES[side]
    with pytest.raises(TypeError):
        table[(initial, Trigger.ACK_RECEIVED)] = states.COMPLETED  # type: ignore[index]


# --------------------------------------------------------------------------- happy paths

INVITER_PATHS = {
    "stock-with-identity": [
        (Trigger.STREAM_ADMITTED, I.READING_REQUEST),
        (Trigger.CONTACT_RECEIVED, I.VALIDATING_TOKEN),
        (Trigger.TOKEN_RESERVED_IDENTITY_REQUIRED, I.VALIDATING_IDENTITY),
        (Trigger.IDENTITY_ACCEPTED_STOCK, I.PROVISIONING_DB),
        (Trigger.DATABASE_PROVISIONED, I.SENDING_RESPONSE),
        (Trigger.RESPONSE_SENT, I.AWAITING_ACK),
        (Trigger.ACK_RECEIVED, I.COMPLETED),
    ],
    "stock-without-identity": [
        (Trigger.STREAM_ADMITTED, I.READING_REQUEST),
        (Trigger.CONTACT_RECEIVED, I.VALIDATING_TOKEN),
        (Trigger.TOKEN_RESERVED_STOCK, I.PROVISIONING_DB),
        (Trigger.DATABASE_PROVISIONED, I.SENDING_RESPONSE),
        (Trigger.RESPONSE_SENT, I.AWAITING_ACK),
        (Trigger.ACK_RECEIVED, I.COMPLETED),
    ],
    "foil-with-identity": [
        (Trigger.STREAM_ADMITTED, I.READING_REQUEST),
        (Trigger.CONTACT_RECEIVED, I.VALIDATING_TOKEN),
        (Trigger.TOKEN_RESERVED_IDENTITY_REQUIRED, I.VALIDATING_IDENTITY),
        (Trigger.IDENTITY_ACCEPTED_FOIL, I.SENDING_RESPONSE),
        (Trigger.RESPONSE_SENT, I.AWAITING_ACK),
        (Trigger.PROVISION_ACCEPTED_ACK_SENT, I.COMPLETED),
    ],
    "foil-without-identity": [
        (Trigger.STREAM_ADMITTED, I.READING_REQUEST),
        (Trigger.CONTACT_RECEIVED, I.VALIDATING_TOKEN),
        (Trigger.TOKEN_RESERVED_FOIL, I.SENDING_RESPONSE),
        (Trigger.RESPONSE_SENT, I.AWAITING_ACK),
        (Trigger.PROVISION_ACCEPTED_ACK_SENT, I.COMPLETED),
    ],
}
INVITEE_PATHS = {
    # The inviter is stock: it provisioned, B checks and acknowledges.
    "inviter-stock": [
        (Trigger.STREAM_OPENED, B.SENDING_CONTACT),
        (Trigger.CONTACT_SENT, B.AWAITING_RESPONSE),
        (Trigger.ACCEPTED_WITH_PROVISION, B.SENDING_ACK),
        (Trigger.ACK_SENT, B.COMPLETED),
    ],
    # The inviter is foil: B (stock) provisions and waits for A's ack.
    "inviter-foil": [
        (Trigger.STREAM_OPENED, B.SENDING_CONTACT),
        (Trigger.CONTACT_SENT, B.AWAITING_RESPONSE),
        (Trigger.ACCEPTED_WITHOUT_PROVISION, B.PROVISIONING_DB),
        (Trigger.PROVISIONED_SENT, B.AWAITING_ACK),
        (Trigger.ACK_RECEIVED, B.COMPLETED),
    ],
}
HAPPY = [
    pytest.param(INVITER_TRANSITIONS, I.CREATED, path, id=f"inviter-{name}")
    for name, path in INVITER_PATHS.items()
] + [
    pytest.param(INVITEE_TRANSITIONS, B.DIALING, path, id=f"invitee-{name}")
    for name, path in INVITEE_PATHS.items()
]


@pytest.mark.parametrize(("table", "initial", "path"), HAPPY)
def test_happy_path(
    table: Mapping[tuple[Any, Trigger], Any], initial: Any, path: list[tuple[Trigger, Any]]
) -> None:
    machine = run(table, initial, [trigger for trigger, _ in path])
    assert machine.state.value == "COMPLETED"
    assert machine.is_terminal
    states = [initial] + [target for _, target in path]
    assert [r.from_state for r in machine.records] == [s.value for s in states[:-1]]
    assert [r.to_state for r in machine.records] == [s.value for s in states[1:]]
    assert [r.trigger for r in machine.records] == [trigger for trigger, _ in path]


def test_foil_inviter_skips_provisioning() -> None:
    for name, path in INVITER_PATHS.items():
        visited = {target for _, target in path}
        assert (I.PROVISIONING_DB in visited) is name.startswith("stock"), name
        assert (I.VALIDATING_IDENTITY in visited) is name.endswith("with-identity"), name


def test_happy_paths_cover_every_non_failure_transition() -> None:
    for table, paths, initial in (
        (INVITER_TRANSITIONS, INVITER_PATHS, I.CREATED),
        (INVITEE_TRANSITIONS, INVITEE_PATHS, B.DIALING),
    ):
        used = set()
        for path in paths.values():
            state = initial
            for trigger, target in path:
                used.add((state, trigger))
                state = target
        happy = {key for key in table if key[1] not in (Trigger.REJECTED, Trigger.TIMED_OUT)}
        assert used == happy


@pytest.mark.parametrize("side", list(SIDES))
def test_failure_mid_way_ends_the_machine(side: str) -> None:
    table, states, initial = SIDES[side]
    path = (
        INVITER_PATHS["stock-with-identity"] if side == "inviter" else INVITEE_PATHS["inviter-foil"]
    )
    for cut in range(len(path)):
        for trigger, final in (
            (Trigger.REJECTED, states.FAILED),
            (Trigger.TIMED_OUT, states.TIMEOUT),
        ):
            machine = run(table, initial, [t for t, _ in path[:cut]] + [trigger])
            assert machine.state is final
            assert machine.is_terminal
            with pytest.raises(IllegalTransition):
                machine.fire(path[cut][0], monotonic=100.0, wall_time=WALL)


def test_stock_inviter_cannot_skip_provisioning() -> None:
    machine = run(
        INVITER_TRANSITIONS, I.CREATED, [Trigger.STREAM_ADMITTED, Trigger.CONTACT_RECEIVED]
    )
    with pytest.raises(IllegalTransition):
        machine.fire(Trigger.RESPONSE_SENT, monotonic=5.0, wall_time=WALL)
    with pytest.raises(IllegalTransition):
        machine.fire(Trigger.DATABASE_PROVISIONED, monotonic=5.0, wall_time=WALL)
    assert machine.state is I.VALIDATING_TOKEN
    assert len(machine.records) == 2


# --------------------------------------------------------------------------- records


def test_records_carry_sequence_states_trigger_and_times() -> None:
    machine: StateMachine[InviterState] = StateMachine(
        INVITER_TRANSITIONS, I.CREATED, monotonic=100.0
    )
    steps = [
        (Trigger.STREAM_ADMITTED, 100.25),
        (Trigger.CONTACT_RECEIVED, 101.0),
        (Trigger.TOKEN_RESERVED_FOIL, 101.0),
        (Trigger.RESPONSE_SENT, 103.5),
        (Trigger.PROVISION_ACCEPTED_ACK_SENT, 110.0),
    ]
    walls = [WALL + timedelta(seconds=i) for i in range(len(steps))]
    returned = [
        machine.fire(trigger, monotonic=mono, wall_time=wall)
        for (trigger, mono), wall in zip(steps, walls, strict=True)
    ]
    records = machine.records
    assert records == tuple(returned)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert [r.trigger for r in records] == [t for t, _ in steps]
    assert [r.monotonic for r in records] == [m for _, m in steps]
    assert [r.wall_time for r in records] == walls
    assert [r.time_in_previous_s for r in records] == [0.25, 0.75, 0.0, 2.5, 6.5]
    assert [(r.from_state, r.to_state) for r in records] == [
        ("CREATED", "READING_REQUEST"),
        ("READING_REQUEST", "VALIDATING_TOKEN"),
        ("VALIDATING_TOKEN", "SENDING_RESPONSE"),
        ("SENDING_RESPONSE", "AWAITING_ACK"),
        ("AWAITING_ACK", "COMPLETED"),
    ]


def test_illegal_transition_leaves_no_record_and_keeps_the_clock() -> None:
    machine: StateMachine[InviteeState] = StateMachine(
        INVITEE_TRANSITIONS, B.DIALING, monotonic=0.0
    )
    with pytest.raises(IllegalTransition):
        machine.fire(Trigger.ACK_RECEIVED, monotonic=3.0, wall_time=WALL)
    assert machine.records == ()
    record = machine.fire(Trigger.STREAM_OPENED, monotonic=4.0, wall_time=WALL)
    assert record.seq == 1
    assert record.time_in_previous_s == 4.0


def test_records_are_a_snapshot() -> None:
    machine: StateMachine[InviteeState] = StateMachine(
        INVITEE_TRANSITIONS, B.DIALING, monotonic=0.0
    )
    before = machine.records
    machine.fire(Trigger.STREAM_OPENED, monotonic=1.0, wall_time=WALL)
    assert before == ()
    assert len(machine.records) == 1
    with pytest.raises(AttributeError):
        machine.records[0].seq = 7  # type: ignore[misc]


def test_illegal_transition_is_not_a_protocol_error() -> None:
    assert issubclass(IllegalTransition, RuntimeError)
    assert not issubclass(IllegalTransition, ValueError)
