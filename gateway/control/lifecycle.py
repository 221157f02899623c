"""The life of a command to a meter, as a pure core: states, allowed transitions, what counts
as confirmation, and what to do when confirmation does not come. No I/O.

A command goes ``planned → sent → acknowledged → confirmed``, or ends ``rejected``,
``unconfirmed`` or ``cancelled``; ``expired`` waits for an offline meter to come back. The
meter's ``ok`` reply only *acknowledges*: a command is confirmed when the meter's own reported
state (its status ``relay`` / ``valve``, or the ``96.3.10`` / ``24.4.0`` channels) matches the
order, as DLMS disconnect control defines it: a disconnect holds while the relay is
``disconnected`` or ``armed``; a reconnect only when it is ``connected`` (or ``armed`` after
``arm_reconnect``).

When no matching state arrives within the confirmation time the gateway asks the meter for its
state (``read_state``), then sends the command again with a new id and nonce, up to the
policy's number of retries, then gives up: ``unconfirmed``, and the meter goes on the work list.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from protocols.commands import CommandAction

__all__ = [
    "FINAL",
    "LIVE",
    "CommandState",
    "MeterReport",
    "Timeout",
    "TimeoutStep",
    "can_move",
    "on_timeout",
    "report_from_channels",
    "satisfies",
    "sources",
]


class CommandState(enum.StrEnum):
    PLANNED = "planned"
    SENT = "sent"
    ACKNOWLEDGED = "acknowledged"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    UNCONFIRMED = "unconfirmed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


_S = CommandState
_MOVES: Final[dict[CommandState, frozenset[CommandState]]] = {
    _S.PLANNED: frozenset({_S.SENT, _S.CANCELLED, _S.REJECTED}),
    _S.SENT: frozenset(
        {_S.ACKNOWLEDGED, _S.CONFIRMED, _S.REJECTED, _S.UNCONFIRMED, _S.EXPIRED, _S.CANCELLED}
    ),
    _S.ACKNOWLEDGED: frozenset(
        {_S.CONFIRMED, _S.SENT, _S.REJECTED, _S.UNCONFIRMED, _S.EXPIRED, _S.CANCELLED}
    ),
    _S.EXPIRED: frozenset({_S.SENT, _S.CANCELLED, _S.CONFIRMED}),
    _S.CONFIRMED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.UNCONFIRMED: frozenset(),
    _S.CANCELLED: frozenset(),
}

LIVE: Final = frozenset({_S.PLANNED, _S.SENT, _S.ACKNOWLEDGED, _S.EXPIRED})
"""States in which the command loop still works on a command."""
FINAL: Final = frozenset(s for s, nxt in _MOVES.items() if not nxt)


def can_move(old: CommandState, new: CommandState) -> bool:
    """Whether ``old → new`` is an allowed transition (a retry goes back to ``sent``)."""
    return new in _MOVES[old]


def sources(new: CommandState) -> list[str]:
    """The states a command may move to ``new`` from (for ``… WHERE state = ANY(…)``)."""
    return [old.value for old in CommandState if can_move(old, new)]


@dataclass(frozen=True, slots=True)
class MeterReport:
    """A meter's reported relay and valve state (None: not reported / not applicable)."""

    relay: str | None
    valve: str | None


# OBIS 96.3.10 control state and 24.4.0 valve state, as the meters report them.
_RELAY_CODES: Final = {0: "disconnected", 1: "connected", 2: "armed"}
_VALVE_CODES: Final = {0: "closed", 1: "open", 2: "restricted"}


def report_from_channels(relay_code: float | None, valve_code: float | None) -> MeterReport:
    """The state carried by the ``96.3.10`` / ``24.4.0`` channels (unknown codes: None)."""

    def code(table: dict[int, str], value: float | None) -> str | None:
        if value is None or value != int(value):
            return None
        return table.get(int(value))

    return MeterReport(code(_RELAY_CODES, relay_code), code(_VALVE_CODES, valve_code))


_SATISFIED_BY: Final[dict[CommandAction, tuple[str, frozenset[str]]]] = {
    CommandAction.DISCONNECT: ("relay", frozenset({"disconnected", "armed"})),
    CommandAction.RECONNECT: ("relay", frozenset({"connected"})),
    CommandAction.ARM_RECONNECT: ("relay", frozenset({"armed", "connected"})),
    CommandAction.RESTRICT: ("valve", frozenset({"restricted"})),
    CommandAction.CLOSE_VALVE: ("valve", frozenset({"closed"})),
    CommandAction.RESTORE: ("valve", frozenset({"open"})),
}


def satisfies(action: CommandAction, report: MeterReport) -> bool:
    """Whether the meter's reported state is what ``action`` ordered.

    ``read_state`` is satisfied by any report of the relay or the valve.
    """
    if action is CommandAction.READ_STATE:
        return report.relay is not None or report.valve is not None
    part, wanted = _SATISFIED_BY[action]
    value = report.relay if part == "relay" else report.valve
    return value in wanted


class TimeoutStep(enum.StrEnum):
    WAIT = "wait"
    """The meter is offline and the message has not expired: wait for it."""
    EXPIRE = "expire"
    """The meter is offline and the message expired: re-issue when the meter is back."""
    PROBE = "probe"
    """Ask the meter for its state (``read_state``)."""
    RETRY = "retry"
    """Send the command again with a new id and nonce."""
    GIVE_UP = "give_up"
    """Mark it unconfirmed and put the meter on the work list."""


@dataclass(frozen=True, slots=True)
class Timeout:
    step: TimeoutStep
    due_at: datetime | None
    """When to look again (None: not until something happens)."""


def on_timeout(
    *,
    now: datetime,
    online: bool,
    expires_at: datetime,
    attempts: int,
    probes: int,
    retries: int,
    confirm_timeout: timedelta,
) -> Timeout:
    """What to do with a sent command whose confirmation time has passed.

    ``attempts`` counts the messages of the command sent so far (the first one included),
    ``probes`` the ``read_state`` probes since the last of them.
    """
    if not online:
        if now < expires_at:
            return Timeout(TimeoutStep.WAIT, expires_at)
        return Timeout(TimeoutStep.EXPIRE, None)
    if probes == 0:
        return Timeout(TimeoutStep.PROBE, now + confirm_timeout)
    if attempts <= retries:
        return Timeout(TimeoutStep.RETRY, now + confirm_timeout)
    return Timeout(TimeoutStep.GIVE_UP, None)
