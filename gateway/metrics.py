"""Prometheus metrics of one gateway instance, in its own registry (served at ``/metrics``).

A registry per instance rather than the process-global one, so that several gateways in one
process (tests) do not share counters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from gateway.ingest.writer import BatchResult

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_received = Counter(
            "gateway_messages_received", "Messages received and committed", ["kind"], registry=r
        )
        self.readings_received = Counter(
            "gateway_readings_received",
            "Readings decoded and committed (new or duplicate)",
            registry=r,
        )
        self.readings_stored = Counter(
            "gateway_readings_stored", "Readings newly committed", registry=r
        )
        self.readings_duplicate = Counter(
            "gateway_readings_duplicate", "Readings already stored (redelivery)", registry=r
        )
        self.readings_replaced = Counter(
            "gateway_readings_replaced",
            "Readings that replaced a stored one of worse quality",
            registry=r,
        )
        self.reading_conflicts = Counter(
            "gateway_reading_conflicts",
            "Readings refused because another value of the same quality is stored"
            " (recorded in reading_conflicts)",
            registry=r,
        )
        self.readings_superseded = Counter(
            "gateway_readings_superseded",
            "Readings ignored because a better-quality reading is stored",
            registry=r,
        )
        self.events_stored = Counter("gateway_events_written", "Meter events written", registry=r)
        self.dead_letters_redelivered = Counter(
            "gateway_dead_letters_redelivered",
            "Deliveries of a message already dead-lettered (stored once, counted)",
            registry=r,
        )
        self.decode_internal_errors = Counter(
            "gateway_decode_internal_errors",
            "Messages whose decoding raised an unexpected exception (dead-lettered)",
            ["exception"],
            registry=r,
        )
        self.dead_letters = Counter(
            "gateway_dead_letters", "Messages dead-lettered", ["reason"], registry=r
        )
        self.batch_rows = Histogram(
            "gateway_batch_readings",
            "Readings per committed batch",
            buckets=(1, 10, 100, 1000, 5000, 10000, 20000, 50000),
            registry=r,
        )
        self.flush_seconds = Histogram(
            "gateway_flush_seconds",
            "Time from taking a batch to its commit",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.flush_errors = Counter(
            "gateway_flush_errors", "Batch writes that failed and were retried", registry=r
        )
        self.queue_depth = Gauge(
            "gateway_ingest_pending_rows", "Rows received but not yet committed", registry=r
        )
        self.modbus_polls = Counter(
            "gateway_modbus_polls", "Modbus device polls", ["result"], registry=r
        )
        self.mqtt_connected = Gauge(
            "gateway_mqtt_connected", "1 while connected to the broker", registry=r
        )

    def record_batch(
        self, result: BatchResult, *, kinds: Mapping[str, int], seconds: float
    ) -> None:
        """Count a committed batch (per batch rather than per message: counters take a lock)."""
        for kind, count in kinds.items():
            self.messages_received.labels(kind=kind).inc(count)
        self.readings_received.inc(result.readings_staged)
        self.readings_stored.inc(result.readings_stored)
        self.readings_duplicate.inc(result.duplicates)
        self.readings_replaced.inc(result.readings_replaced)
        self.reading_conflicts.inc(result.readings_conflicts)
        self.readings_superseded.inc(result.readings_superseded)
        self.events_stored.inc(result.events_stored)
        self.dead_letters_redelivered.inc(result.dead_letters_repeated)
        self.batch_rows.observe(result.readings_staged)
        self.flush_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
