"""The detection work queue as the ingest writer fills it (SQL only, no imports).

Every ingest transaction that stores readings or events also records, per meter, the data-time
range it touched. The detection loop drains these rows and re-evaluates each meter's affected
window from committed data, so detection depends neither on arrival order nor on which gateway
process received a meter's messages.
"""

from __future__ import annotations

from typing import Final

__all__ = ["QUEUE_EVENTS", "QUEUE_FROM_STAGE"]

QUEUE_FROM_STAGE: Final = (
    "INSERT INTO detection_queue (meter_id, lo, hi)"
    " SELECT meter_id, min(ts), max(ts) FROM ingest_stage GROUP BY meter_id"
)
"""Run in the ingest transaction after a batch of readings is staged."""

QUEUE_EVENTS: Final = "INSERT INTO detection_queue (meter_id, lo, hi) VALUES (%s, %s, %s)"
"""Run in the ingest transaction per meter whose events it stored: (meter, first ts, last ts)."""
