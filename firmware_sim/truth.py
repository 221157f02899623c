"""The fleet's ground truth: every injected fault as a JSON Lines record, as it happens.

Detection is scored against this file, so it is written (and flushed) per record by whichever
shell steps the meters, MQTT links and the Modbus server alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from firmware_sim.faults import FaultRecord

__all__ = ["GroundTruth"]


class GroundTruth:
    """Appends fault records as JSON Lines (flushed per record, so readers can follow)."""

    def __init__(self, path: Path | None) -> None:
        self._file: TextIO | None = path.open("a", encoding="utf-8") if path else None
        self.records: list[FaultRecord] = []

    def write(self, records: Sequence[FaultRecord]) -> None:
        self.records.extend(records)
        if self._file is not None:
            for record in records:
                self._file.write(record.to_json_line() + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
