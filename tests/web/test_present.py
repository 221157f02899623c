"""Pure helpers of the field pages: ages, units, consumption from a register, SVG charts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.web.present import Point, age_in_words, consumption, geo_uri, svg_chart, unit_of

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
