"""Pure helpers of the field pages: ages, units, consumption from a register, SVG charts, the
commands offered on a meter card and where a command stands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.web.present import (
    Point,
    age_in_words,
    command_choices,
    command_summary,
    consumption,
    geo_uri,
    svg_chart,
    unit_of,
)

T0 = datetime(2026, 11, 2, tzinfo=UTC)
H = timedelta(hours=1)


def test_age_in_words() -> None:
    assert [age_in_words(s) for s in (None, 5, 12 * 60 + 30, 3 * 3600, 86400, 5 * 86400)] == [
        "never",
        "just now",
        "12 min ago",
        "3 h ago",
        "1 day ago",
        "5 days ago",
    ]


def test_units_follow_the_channel_and_the_utility() -> None:
    assert unit_of("1.8.0", "electricity") == "kWh"
    assert unit_of("credit", "water") == "m3"
    assert unit_of("credit", "electricity") == "kWh"
    assert unit_of("no.such", "water") == ""


def test_consumption_counts_the_step_between_buckets_and_no_negative_use() -> None:
    buckets = [(T0, 10.0, 10.5), (T0 + H, 10.75, 11.0), (T0 + 2 * H, 2.0, 2.5)]
    assert [p.value for p in consumption(buckets)] == [0.5, 0.5, 0.0]


def test_geo_uri_opens_the_map_app() -> None:
    assert geo_uri(None, 28.0, "x") is None
    assert geo_uri(-25.7479, 28.2293, "Meter W7") == (
        "geo:-25.747900,28.229300?q=-25.747900,28.229300(Meter%20W7)"
    )


def test_svg_chart_is_labelled_and_escapes_text() -> None:
    points = [Point(T0 + k * H, v) for k, v in enumerate([1.0, 2.0, 0.5])]
    svg = svg_chart(points, title="Use <per hour>", unit="kWh")
    assert svg.startswith('<svg role="img" aria-label="Use &lt;per hour&gt;: 3 periods, total 3.5')
    assert svg.count("<rect") == 3 and "<per hour>" not in svg
    line = svg_chart(points, title="Voltage", unit="V", kind="line")
    assert "<polyline" in line and "<rect" not in line
    assert "no data" in svg_chart([], title="Empty", unit="V")


def offered(*args: object, live: tuple[str, ...] = ()) -> list[str]:
    return [c.action for c in command_choices(*args, live=live)]


def test_commands_offered_follow_the_supply_state_and_the_reconnect_mode() -> None:
    assert offered("electricity", "connected", None, "remote") == ["read_state"]
    assert offered("electricity", "disconnected", None, "remote") == ["read_state", "reconnect"]
    assert offered("electricity", "armed", None, "remote") == ["read_state", "reconnect"]
    assert offered("electricity", "disconnected", None, "arm") == ["read_state", "arm_reconnect"]
    # Armed already: the customer presses the button; nothing more to send.
    assert offered("electricity", "armed", None, "arm") == ["read_state"]
    assert offered("electricity", None, None, "remote") == ["read_state"]
    assert offered("water", None, "restricted", "remote") == ["read_state", "restore"]
    assert offered("water", None, "closed", "remote") == ["read_state", "restore"]
    assert offered("water", None, "open", "remote") == ["read_state"]
    # An action on its way is not offered twice.
    assert offered("water", None, "closed", "remote", live=("restore",)) == ["read_state"]
    assert offered("electricity", "disconnected", None, "remote", live=("read_state",)) == [
        "reconnect"
    ]


def command(state: str, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "state": state,
        "outcome": "",
        "sent_at": None,
        "acknowledged_at": None,
        "confirmed_at": None,
        "confirmed_state": None,
    }
    return base | fields


def test_a_command_says_where_it_stands() -> None:
    at = datetime(2026, 12, 1, 14, 3, tzinfo=UTC)
    confirmed = command(
        "confirmed", confirmed_at=at, confirmed_state={"relay": "connected", "valve": None}
    )
    assert command_summary(confirmed) == (
        "confirmed 01 Dec 14:03 UTC: the meter reports relay connected"
    )
    assert command_summary(command("planned")) == "waiting to be sent"
    assert command_summary(command("sent", sent_at=at)) == (
        "sent 01 Dec 14:03 UTC, waiting for the meter's state"
    )
    assert command_summary(command("acknowledged", acknowledged_at=at)).startswith(
        "acknowledged by the meter 01 Dec 14:03 UTC"
    )
    assert command_summary(command("rejected", outcome="the meter refused restore: expired")) == (
        "refused: the meter refused restore: expired"
    )
    assert command_summary(command("unconfirmed", outcome="no state after 2 retries")) == (
        "not confirmed: no state after 2 retries"
    )
    assert "offline" in command_summary(command("expired"))
