"""The command life-cycle core on plain values: transitions, what confirms an order (DLMS
disconnect-control semantics), and what happens when confirmation does not come."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.control.lifecycle import (
    FINAL,
    LIVE,
    CommandState,
    MeterReport,
    TimeoutStep,
    can_move,
    on_timeout,
    report_from_channels,
    satisfies,
    sources,
)
from gateway.detection.model import AlertKind, WorkListKind
from protocols.commands import CommandAction

A = CommandAction
NOW = datetime(2026, 12, 1, 9, tzinfo=UTC)
FIVE_MIN = timedelta(minutes=5)


@pytest.mark.parametrize(
    ("action", "relay", "valve", "expected"),
    [
        (A.DISCONNECT, "disconnected", None, True),
        (A.DISCONNECT, "armed", None, True),  # ready for reconnection: the supply is off
        (A.DISCONNECT, "connected", None, False),
        (A.RECONNECT, "connected", None, True),
        (A.RECONNECT, "armed", None, False),  # only armed: the customer has not pressed yet
        (A.ARM_RECONNECT, "armed", None, True),
        (A.ARM_RECONNECT, "connected", None, True),  # armed, then the button was pressed
        (A.ARM_RECONNECT, "disconnected", None, False),
        (A.RESTRICT, None, "restricted", True),
        (A.RESTRICT, None, "closed", False),  # never closed when restriction was ordered
        (A.CLOSE_VALVE, None, "closed", True),
        (A.RESTORE, None, "open", True),
        (A.RESTORE, None, "restricted", False),
        (A.DISCONNECT, None, None, False),  # nothing reported
        (A.READ_STATE, "connected", None, True),
        (A.READ_STATE, None, "open", True),
        (A.READ_STATE, None, None, False),
    ],
)
def test_confirmation_reads_the_meter_state_as_dlms_defines_it(
    action: CommandAction, relay: str | None, valve: str | None, expected: bool
) -> None:
    assert satisfies(action, MeterReport(relay, valve)) is expected


def test_channel_codes_map_to_states() -> None:
    # OBIS 96.3.10: 0 disconnected, 1 connected, 2 ready; 24.4.0: 0 closed, 1 open, 2 restricted
    assert report_from_channels(0.0, None) == MeterReport("disconnected", None)
    assert report_from_channels(2.0, None) == MeterReport("armed", None)
    assert report_from_channels(None, 2.0) == MeterReport(None, "restricted")
    assert report_from_channels(1.0, 0.0) == MeterReport("connected", "closed")
    assert report_from_channels(7.0, 0.5) == MeterReport(None, None)


def test_transitions_follow_the_life_cycle() -> None:
    assert can_move(CommandState.PLANNED, CommandState.SENT)
    assert can_move(CommandState.SENT, CommandState.ACKNOWLEDGED)
    assert can_move(CommandState.ACKNOWLEDGED, CommandState.CONFIRMED)
    assert can_move(CommandState.ACKNOWLEDGED, CommandState.SENT)  # a retry
    assert can_move(CommandState.EXPIRED, CommandState.SENT)  # re-issued
    assert not can_move(CommandState.PLANNED, CommandState.CONFIRMED)  # never unsent
    assert not can_move(CommandState.CONFIRMED, CommandState.SENT)
    assert {
        CommandState.CONFIRMED,
        CommandState.REJECTED,
        CommandState.UNCONFIRMED,
        CommandState.CANCELLED,
    } == FINAL
    assert LIVE.isdisjoint(FINAL) and set(CommandState) == LIVE | FINAL
    # what the SQL updates of the command loop accept as the state they move from
    assert sources(CommandState.CONFIRMED) == ["sent", "acknowledged", "expired"]
    assert sources(CommandState.CANCELLED) == ["planned", "sent", "acknowledged", "expired"]


def test_timeouts_probe_then_retry_then_give_up() -> None:
    def step(**kw: object) -> TimeoutStep:
        values: dict[str, object] = {
            "now": NOW,
            "online": True,
            "expires_at": NOW + FIVE_MIN,
            "attempts": 1,
            "probes": 0,
            "retries": 3,
            "confirm_timeout": FIVE_MIN,
        }
        values.update(kw)
        return on_timeout(**values).step  # type: ignore[arg-type]

    assert step() is TimeoutStep.PROBE
    assert step(probes=1) is TimeoutStep.RETRY
    assert step(probes=1, attempts=3) is TimeoutStep.RETRY
    assert step(probes=1, attempts=4) is TimeoutStep.GIVE_UP  # the first + 3 retries
    assert step(probes=0, attempts=4) is TimeoutStep.PROBE
    assert step(retries=0, probes=1) is TimeoutStep.GIVE_UP
    # offline: the command waits at the broker until it expires, then waits for the meter
    waiting = on_timeout(
        now=NOW, online=False, expires_at=NOW + FIVE_MIN, attempts=1, probes=0, retries=3,
        confirm_timeout=FIVE_MIN,
    )  # fmt: skip
    assert (waiting.step, waiting.due_at) == (TimeoutStep.WAIT, NOW + FIVE_MIN)
    assert step(online=False, expires_at=NOW) is TimeoutStep.EXPIRE


def test_the_work_list_knows_every_alert_kind_of_the_rules() -> None:
    assert {k.value for k in AlertKind} < {k.value for k in WorkListKind}
    assert {"command_unconfirmed", "command_rejected"} == (
        {k.value for k in WorkListKind} - {k.value for k in AlertKind}
    )
