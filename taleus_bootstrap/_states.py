"""Every state transition of both sides, as data.

This file holds the inviter's and the invitee's transition tables (PROTOCOL.md, "Session states").
Nothing else in the package decides which state follows which: the drivers fire triggers, and
:class:`StateMachine` looks the pair up here. A pair that is not in the table is a bug and raises
:class:`IllegalTransition`. The docs' state diagrams are generated from these tables.

Sans-I/O: times are passed in by the caller (monotonic seconds and an aware wall-clock datetime).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Generic, NamedTuple, TypeVar

__all__ = [
    "INVITEE_TRANSITIONS",
    "INVITER_TRANSITIONS",
    "IllegalTransition",
    "InviteeState",
    "InviterState",
    "StateMachine",
    "TransitionRecord",
    "Trigger",
]


class InviterState(StrEnum):
    """States of a :class:`~taleus_bootstrap.BootstrapSession` (side A, the listener)."""

    CREATED = "CREATED"
    READING_REQUEST = "READING_REQUEST"
    VALIDATING_TOKEN = "VALIDATING_TOKEN"
    VALIDATING_IDENTITY = "VALIDATING_IDENTITY"
    PROVISIONING_DB = "PROVISIONING_DB"
    SENDING_RESPONSE = "SENDING_RESPONSE"
    AWAITING_ACK = "AWAITING_ACK"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"


class InviteeState(StrEnum):
    """States of :func:`~taleus_bootstrap.initiate_bootstrap` (side B, the dialer)."""

    DIALING = "DIALING"
    SENDING_CONTACT = "SENDING_CONTACT"
    AWAITING_RESPONSE = "AWAITING_RESPONSE"
    PROVISIONING_DB = "PROVISIONING_DB"
    SENDING_ACK = "SENDING_ACK"
    AWAITING_ACK = "AWAITING_ACK"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"


class Trigger(StrEnum):
    """What happened to cause a transition."""

    # inviter
    STREAM_ADMITTED = "stream_admitted"
    CONTACT_RECEIVED = "contact_received"
    TOKEN_RESERVED_IDENTITY_REQUIRED = "token_reserved_identity_required"
    TOKEN_RESERVED_STOCK = "token_reserved_stock"
    TOKEN_RESERVED_FOIL = "token_reserved_foil"
    IDENTITY_ACCEPTED_STOCK = "identity_accepted_stock"
    IDENTITY_ACCEPTED_FOIL = "identity_accepted_foil"
    DATABASE_PROVISIONED = "database_provisioned"
    RESPONSE_SENT = "response_sent"
    ACK_RECEIVED = "ack_received"
    PROVISION_ACCEPTED_ACK_SENT = "provision_accepted_ack_sent"
    # invitee
    STREAM_OPENED = "stream_opened"
    CONTACT_SENT = "contact_sent"
    ACCEPTED_WITH_PROVISION = "accepted_with_provision"
    ACCEPTED_WITHOUT_PROVISION = "accepted_without_provision"
    PROVISIONED_SENT = "provisioned_sent"
    ACK_SENT = "ack_sent"
    # both
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"


S = TypeVar("S", bound=StrEnum)

_I = InviterState
_INVITER_HAPPY: Final[dict[tuple[InviterState, Trigger], InviterState]] = {
    (_I.CREATED, Trigger.STREAM_ADMITTED): _I.READING_REQUEST,
    (_I.READING_REQUEST, Trigger.CONTACT_RECEIVED): _I.VALIDATING_TOKEN,
    # The token carries identity requirements: validate the identity next.
    (_I.VALIDATING_TOKEN, Trigger.TOKEN_RESERVED_IDENTITY_REQUIRED): _I.VALIDATING_IDENTITY,
    # No identity requirements: VALIDATING_IDENTITY is skipped.
    (_I.VALIDATING_TOKEN, Trigger.TOKEN_RESERVED_STOCK): _I.PROVISIONING_DB,
    (_I.VALIDATING_TOKEN, Trigger.TOKEN_RESERVED_FOIL): _I.SENDING_RESPONSE,
    (_I.VALIDATING_IDENTITY, Trigger.IDENTITY_ACCEPTED_STOCK): _I.PROVISIONING_DB,
    # Foil: the invitee provisions, so PROVISIONING_DB is skipped.
    (_I.VALIDATING_IDENTITY, Trigger.IDENTITY_ACCEPTED_FOIL): _I.SENDING_RESPONSE,
    (_I.PROVISIONING_DB, Trigger.DATABASE_PROVISIONED): _I.SENDING_RESPONSE,
    (_I.SENDING_RESPONSE, Trigger.RESPONSE_SENT): _I.AWAITING_ACK,
    # Stock: B acknowledges A's provision.
    (_I.AWAITING_ACK, Trigger.ACK_RECEIVED): _I.COMPLETED,
    # Foil: A receives `provisioned`, accepts it, and sends the ack.
    (_I.AWAITING_ACK, Trigger.PROVISION_ACCEPTED_ACK_SENT): _I.COMPLETED,
}

_B = InviteeState
_INVITEE_HAPPY: Final[dict[tuple[InviteeState, Trigger], InviteeState]] = {
    (_B.DIALING, Trigger.STREAM_OPENED): _B.SENDING_CONTACT,
    (_B.SENDING_CONTACT, Trigger.CONTACT_SENT): _B.AWAITING_RESPONSE,
    # Inviter is stock: it provisioned; B checks and acknowledges.
    (_B.AWAITING_RESPONSE, Trigger.ACCEPTED_WITH_PROVISION): _B.SENDING_ACK,
    # Inviter is foil: B (stock) provisions.
    (_B.AWAITING_RESPONSE, Trigger.ACCEPTED_WITHOUT_PROVISION): _B.PROVISIONING_DB,
    (_B.PROVISIONING_DB, Trigger.PROVISIONED_SENT): _B.AWAITING_ACK,
    (_B.SENDING_ACK, Trigger.ACK_SENT): _B.COMPLETED,
    (_B.AWAITING_ACK, Trigger.ACK_RECEIVED): _B.COMPLETED,
}

_INVITER_TERMINAL: Final = frozenset({_I.COMPLETED, _I.FAILED, _I.TIMEOUT})
_INVITEE_TERMINAL: Final = frozenset({_B.COMPLETED, _B.FAILED, _B.TIMEOUT})

# FAILED and TIMEOUT are reachable from every non-terminal state.
INVITER_TRANSITIONS: Final[Mapping[tuple[InviterState, Trigger], InviterState]] = MappingProxyType(
    _INVITER_HAPPY
    | {(s, Trigger.REJECTED): _I.FAILED for s in _I if s not in _INVITER_TERMINAL}
    | {(s, Trigger.TIMED_OUT): _I.TIMEOUT for s in _I if s not in _INVITER_TERMINAL}
)
INVITEE_TRANSITIONS: Final[Mapping[tuple[InviteeState, Trigger], InviteeState]] = MappingProxyType(
    _INVITEE_HAPPY
    | {(s, Trigger.REJECTED): _B.FAILED for s in _B if s not in _INVITEE_TERMINAL}
    | {(s, Trigger.TIMED_OUT): _B.TIMEOUT for s in _B if s not in _INVITEE_TERMINAL}
)


class IllegalTransition(RuntimeError):
    """A trigger fired in a state whose table row does not allow it (a bug, never peer input)."""


class TransitionRecord(NamedTuple):
    """One transition: sequence number, states, trigger, and when it happened (immutable)."""

    seq: int
    from_state: str
    to_state: str
    trigger: Trigger
    monotonic: float
    wall_time: datetime
    time_in_previous_s: float


class StateMachine(Generic[S]):
    """Walks one transition table, keeping the records of every transition taken."""

    def __init__(
        self,
        table: Mapping[tuple[S, Trigger], S],
        initial: S,
        *,
        monotonic: float,
    ) -> None:
        self._table = table
        self._state = initial
        self._entered_at = monotonic
        self._records: list[TransitionRecord] = []

    @property
    def state(self) -> S:
        """The current state."""
        return self._state

    @property
    def records(self) -> tuple[TransitionRecord, ...]:
        """Every transition so far, oldest first."""
        return tuple(self._records)

    @property
    def is_terminal(self) -> bool:
        """True once the machine reached a state with no way out."""
        return not any(state == self._state for state, _ in self._table)

    def can_fire(self, trigger: Trigger) -> bool:
        """Whether ``trigger`` is allowed in the current state."""
        return (self._state, trigger) in self._table

    def fire(self, trigger: Trigger, *, monotonic: float, wall_time: datetime) -> TransitionRecord:
        """Take the transition for ``trigger``; :class:`IllegalTransition` if there is none."""
        try:
            target = self._table[(self._state, trigger)]
        except KeyError:
            raise IllegalTransition(
                f"{trigger.value} is not allowed in {self._state.value}"
            ) from None
        record = TransitionRecord(
            seq=len(self._records) + 1,
            from_state=str(self._state),
            to_state=str(target),
            trigger=trigger,
            monotonic=monotonic,
            wall_time=wall_time,
            time_in_previous_s=max(0.0, monotonic - self._entered_at),
        )
        self._records.append(record)
        self._state = target
        self._entered_at = monotonic
        return record
