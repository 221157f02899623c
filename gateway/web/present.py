"""Pure presentation helpers of the field pages: ages in words, units, consumption, SVG charts.

No I/O: everything here takes values and returns values, so it is tested without a browser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any, Final
from urllib.parse import quote

from protocols.channels import CHANNELS

__all__ = [
    "LIVE_COMMAND_STATES",
    "CommandChoice",
    "Point",
    "age_in_words",
    "command_choices",
    "command_summary",
    "consumption",
    "geo_uri",
    "main_register",
    "svg_chart",
    "unit_of",
]

MAIN_REGISTER: Final = {"electricity": "1.8.0", "water": "24.2.1"}
VOLTAGE: Final = "32.7.0"


@dataclass(frozen=True, slots=True)
class Point:
    at: datetime
    value: float


def age_in_words(seconds: float | None) -> str:
    """``12 min ago``-style age; ``never`` for None."""
    if seconds is None:
        return "never"
    s = max(0, int(seconds))
    if s < 60:
        return "just now"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 86400:
        return f"{s // 3600} h ago"
    days = s // 86400
    return f"{days} day{'s' if days != 1 else ''} ago"


def unit_of(channel: str, utility: str) -> str:
    """The channel's unit; credit is in the utility's unit (kWh or m³)."""
    spec = CHANNELS.get(channel)
    if spec is None:
        return ""
    if spec.unit == "kWh|m3":
        return "kWh" if utility == "electricity" else "m3"
    return spec.unit


def main_register(utility: str) -> str | None:
    return MAIN_REGISTER.get(utility)


def geo_uri(latitude: float | None, longitude: float | None, label: str) -> str | None:
    """An RFC 5870 ``geo:`` URI that opens the phone's map app at the meter."""
    if latitude is None or longitude is None:
        return None
    return f"geo:{latitude:.6f},{longitude:.6f}?q={latitude:.6f},{longitude:.6f}({quote(label)})"


def consumption(buckets: Sequence[tuple[datetime, float, float]]) -> list[Point]:
    """Use per bucket from a cumulative register's ``(bucket, first, last)`` values, in order.

    A bucket's use is its last value minus the previous bucket's last value (the first bucket:
    minus its own first), so the step between buckets is not lost; a negative step (rollover,
    replaced meter) counts as no use rather than as a negative bar.
    """
    points: list[Point] = []
    previous: float | None = None
    for at, first, last in buckets:
        base = previous if previous is not None else first
        points.append(Point(at, max(0.0, last - base)))
        previous = last
    return points


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def svg_chart(
    points: Sequence[Point],
    *,
    title: str,
    unit: str,
    kind: str = "bar",
    width: int = 340,
    height: int = 140,
) -> str:
    """An accessible inline SVG chart (``role="img"`` with a title and a summary)."""
    label = escape(title)
    if not points:
        return (
            f'<svg role="img" aria-label="{label}: no data" viewBox="0 0 {width} 40" '
            f'width="100%" class="chart"><title>{label}: no data</title>'
            f'<text x="4" y="24">No data in this period</text></svg>'
        )
    values = [p.value for p in points]
    top = max(values)
    bottom = 0.0 if kind == "bar" else min(values)
    if top == bottom:
        top = bottom + 1.0
    pad_l, pad_b, pad_t = 44, 18, 8
    plot_w, plot_h = width - pad_l - 4, height - pad_b - pad_t

    def y(v: float) -> float:
        return pad_t + plot_h * (1 - (v - bottom) / (top - bottom))

    total = sum(values) if kind == "bar" else None
    summary = (
        f"{len(points)} periods, total {_fmt(total)} {unit}, peak {_fmt(max(values))} {unit}"
        if total is not None
        else f"{len(points)} periods, from {_fmt(min(values))} to {_fmt(max(values))} {unit}"
    )
    parts = [
        f'<svg role="img" aria-label="{label}: {escape(summary)}" viewBox="0 0 {width} {height}"'
        f' width="100%" class="chart" data-points="{len(points)}">',
        f"<title>{label}</title><desc>{escape(summary)}</desc>",
        f'<text x="0" y="{pad_t + 8}" class="ax">{_fmt(top)}</text>',
        f'<text x="0" y="{pad_t + plot_h}" class="ax">{_fmt(bottom)}</text>',
        f'<text x="{pad_l}" y="{height - 4}" class="ax">{points[0].at:%d %b %H:%M}</text>',
        f'<text x="{width - 4}" y="{height - 4}" class="ax" text-anchor="end">'
        f"{points[-1].at:%d %b %H:%M}</text>",
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 4}" y2="{pad_t + plot_h}"'
        ' class="base"/>',
    ]
    step = plot_w / len(points)
    if kind == "bar":
        for i, p in enumerate(points):
            top_y = y(p.value)
            parts.append(
                f'<rect x="{pad_l + i * step:.1f}" y="{top_y:.1f}" width="{max(step - 1, 0.5):.1f}"'
                f' height="{pad_t + plot_h - top_y:.1f}"><title>{p.at:%Y-%m-%d %H:%M}: '
                f"{_fmt(p.value)} {escape(unit)}</title></rect>"
            )
    else:
        coords = " ".join(
            f"{pad_l + (i + 0.5) * step:.1f},{y(p.value):.1f}" for i, p in enumerate(points)
        )
        parts.append(f'<polyline points="{coords}" class="line"/>')
    parts.append("</svg>")
    return "".join(parts)


LIVE_COMMAND_STATES: Final = frozenset({"planned", "sent", "acknowledged", "expired"})
"""A command in these states is still on its way (the command loop works on it)."""


@dataclass(frozen=True, slots=True)
class CommandChoice:
    action: str
    label: str


def command_choices(
    utility: str,
    relay: str | None,
    valve: str | None,
    reconnect_mode: str,
    live: Sequence[str] = (),
) -> list[CommandChoice]:
    """The commands a technician may send from the card, given the supply's reported state.

    Reading the state is always offered; reconnecting only a disconnected (or armed) relay,
    as the meter's reconnect mode does it (``arm``: the customer presses the meter's button);
    restoring only a restricted or closed valve. An action already on its way (``live``) is
    not offered twice.
    """
    choices = [CommandChoice("read_state", "Read state now")]
    if utility == "electricity":
        if reconnect_mode == "arm" and relay == "disconnected":
            choices.append(CommandChoice("arm_reconnect", "Arm for reconnection"))
        elif reconnect_mode != "arm" and relay in ("disconnected", "armed"):
            choices.append(CommandChoice("reconnect", "Reconnect"))
    elif utility == "water" and valve in ("restricted", "closed"):
        choices.append(CommandChoice("restore", "Restore full flow"))
    return [c for c in choices if c.action not in live]


def _at(value: datetime | None) -> str:
    return f"{value:%d %b %H:%M} UTC" if value is not None else "(time unknown)"


def _reported(state: Mapping[str, Any] | None) -> str:
    if not state:
        return ""
    parts = [f"{k} {v}" for k, v in state.items() if k in ("relay", "valve") and v]
    return f": the meter reports {', '.join(parts)}" if parts else ""


def command_summary(command: Mapping[str, Any]) -> str:
    """Where a command stands, in words: confirmed from the meter's state, or why not yet."""
    match command["state"]:
        case "confirmed":
            state = _reported(command["confirmed_state"])
            return f"confirmed {_at(command['confirmed_at'])}{state}"
        case "planned":
            return "waiting to be sent"
        case "sent":
            return f"sent {_at(command['sent_at'])}, waiting for the meter's state"
        case "acknowledged":
            return (
                f"acknowledged by the meter {_at(command['acknowledged_at'])}, waiting for its"
                " state to confirm it"
            )
        case "expired":
            return "not delivered: the meter is offline; it is sent again when the meter is back"
        case "rejected":
            return f"refused: {command['outcome']}"
        case "unconfirmed":
            return f"not confirmed: {command['outcome']}"
        case "cancelled":
            return f"cancelled: {command['outcome']}"
        case other:
            return str(other)
