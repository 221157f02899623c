"""Scenario files: which faults to inject on which meters, and when (docs/firmware_sim.md).

JSON (or YAML, when PyYAML is installed and the file ends in ``.yaml``/``.yml``)::

    {"start": "2026-01-05T00:00:00Z",
     "faults": [
       {"meter": 3, "kind": "leak", "start": "+2h", "duration": "6h", "params": {"rate_lph": 10}},
       {"meter": "10100000032", "kind": "tamper_cover", "start": "2026-01-05T03:00:00Z",
        "duration": "15m"},
       {"meter": {"utility": "water", "count": 2}, "kind": "burst", "start": "+1h",
        "duration": "30m"}]}

``meter`` is a fleet index (int), a meter id (string), ``"*"`` (every meter the kind applies
to) or a selector object with optional ``utility``, ``prepaid``, ``transport``, ``count`` and
``skip``. ``start`` is an offset from the simulation start (``+90m``, ``2h``, ``1d``, or seconds)
or an RFC 3339 time; ``duration`` an offset (default 0: an instantaneous fault). A top-level list
is read as the ``faults`` array. Parsing is pure; only :func:`load_scenario` reads the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from firmware_sim.faults import Fault, FaultKind, applicable
from firmware_sim.identity import MeterIdentity
from protocols.errors import UsageError

__all__ = ["Scenario", "load_scenario", "parse_duration", "parse_scenario"]

_DURATION = re.compile(r"\+?(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> timedelta:
    if isinstance(value, bool):
        raise UsageError("a duration is a number of seconds or text like '90m'")
    if isinstance(value, int | float):
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match:
            return timedelta(seconds=float(match["n"]) * _UNITS[match["unit"]])
    raise UsageError(f"bad duration {value!r}: use seconds or e.g. '+90m', '2h', '1d'")


def _parse_start(value: object, sim_start: datetime) -> datetime:
    if isinstance(value, str) and ("T" in value or "-" in value[1:]):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"bad start time {value!r}") from None
        if moment.tzinfo is None:
            raise UsageError(f"start time {value!r} needs a UTC offset")
        return moment
    return sim_start + parse_duration(value)


@dataclass(frozen=True, slots=True)
class Scenario:
    start: datetime | None
    """Simulation start named by the file, if any."""
    entries: Sequence[Mapping[str, object]] = field(default_factory=tuple)

    def resolve(
        self, identities: Sequence[MeterIdentity], sim_start: datetime
    ) -> dict[str, list[Fault]]:
        """Faults per meter id for this fleet."""
        faults: dict[str, list[Fault]] = {}
        for number, entry in enumerate(self.entries):
            try:
                kind = FaultKind(str(entry.get("kind")))
            except ValueError:
                raise UsageError(f"fault #{number}: unknown kind {entry.get('kind')!r}") from None
            start = _parse_start(entry.get("start", 0), sim_start)
            end = start + parse_duration(entry.get("duration", 0))
            params = entry.get("params", {})
            if not isinstance(params, Mapping) or not all(
                isinstance(v, int | float | str) and not isinstance(v, bool)
                for v in params.values()
            ):
                raise UsageError(f"fault #{number}: params must map names to numbers or text")
            targets = _select(entry.get("meter"), identities, kind, number)
            for ident in targets:
                faults.setdefault(ident.meter_id, []).append(
                    Fault(ident.meter_id, kind, start, end, MappingProxyType(dict(params)))
                )
        return faults


def _select(
    selector: object, identities: Sequence[MeterIdentity], kind: FaultKind, number: int
) -> list[MeterIdentity]:
    if isinstance(selector, bool):
        raise UsageError(f"fault #{number}: bad meter selector")
    if isinstance(selector, int):
        if not 0 <= selector < len(identities):
            raise UsageError(f"fault #{number}: meter index {selector} outside the fleet")
        chosen = [identities[selector]]
    elif selector == "*":
        chosen = [i for i in identities if applicable(kind, i.utility)]
    elif isinstance(selector, str):
        chosen = [i for i in identities if i.meter_id == selector]
        if not chosen:
            raise UsageError(f"fault #{number}: no meter {selector!r} in the fleet")
    elif isinstance(selector, Mapping):
        chosen = [
            i
            for i in identities
            if applicable(kind, i.utility)
            and selector.get("utility", i.utility.value) == i.utility.value
            and selector.get("prepaid", i.prepaid) == i.prepaid
            and selector.get("transport", i.transport.value) == i.transport.value
        ]
        skip = selector.get("skip", 0)
        count = selector.get("count", len(chosen))
        if not isinstance(skip, int) or not isinstance(count, int):
            raise UsageError(f"fault #{number}: skip and count must be integers")
        chosen = chosen[skip : skip + count]
    else:
        raise UsageError(f"fault #{number}: bad meter selector {selector!r}")
    for ident in chosen:
        if not applicable(kind, ident.utility):
            raise UsageError(
                f"fault #{number}: {kind.value} does not apply to {ident.utility.value} "
                f"meter {ident.meter_id}"
            )
    return chosen


def parse_scenario(body: object) -> Scenario:
    """Validate a decoded scenario document."""
    if isinstance(body, list):
        body = {"faults": body}
    if not isinstance(body, dict):
        raise UsageError("a scenario is an object with 'faults' (or a list of faults)")
    entries = body.get("faults", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UsageError("'faults' must be a list of objects")
    start = body.get("start")
    sim_start: datetime | None = None
    if start is not None:
        if not isinstance(start, str):
            raise UsageError("scenario 'start' must be an RFC 3339 time")
        sim_start = _parse_start(start, datetime.fromtimestamp(0).astimezone())
    for number, entry in enumerate(entries):
        if "kind" not in entry or "meter" not in entry:
            raise UsageError(f"fault #{number} needs 'meter' and 'kind'")
    return Scenario(sim_start, tuple(entries))


def load_scenario(path: Path) -> Scenario:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # noqa: PLC0415  (optional dependency)
        except ImportError:
            raise UsageError("YAML scenarios need PyYAML (pip install PyYAML)") from None
        return parse_scenario(yaml.safe_load(text))
    try:
        return parse_scenario(json.loads(text))
    except json.JSONDecodeError as exc:
        raise UsageError(f"scenario {path} is not valid JSON: {exc}") from None
