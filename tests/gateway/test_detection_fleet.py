"""A 30-day, 500-meter labelled fleet through the real broker and database: every alert kind
at least 10 times (both utilities where it applies), with rollovers, duplicated and reordered
deliveries and malformed payloads as negatives; precision and recall ≥ 0.95 per kind."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from firmware_sim.faults import FaultRecord
from firmware_sim.labelled import LabelledFleet, generate, plan_labelled_fleet
from gateway.detection.cli import load_alerts
from gateway.detection.score import Labelled, render, score
from gateway.service import GatewayHandle
from gateway.settings import Settings
from protocols.topics import Topics
from tests.plugins.gateway import MqttTestClient, db_scalar

pytestmark = pytest.mark.timeout(1800)

DETECTED = (
    "leak",
    "burst",
    "reverse_flow",
    "stuck_register",
    "register_rollback",
    "comms_loss",
    "voltage_sag",
    "voltage_swell",
    "tamper_cover",
    "tamper_magnetic",
)


def register(url: str, fleet: LabelledFleet) -> None:
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            "INSERT INTO meters (meter_id, utility, payment, verified, reporting_interval_s,"
            " export_allowed) VALUES (%s, %s, %s, true, %s, %s)",
            [
                (r.meter_id, r.utility, r.payment, r.reporting_interval_s, r.export_allowed)
                for r in fleet.registry
            ],
        )


async def settle(url: str, handle: GatewayHandle, *, timeout: float) -> None:
    """Until everything published is committed and detection has drained its queue."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = -1
    quiet = 0
    while loop.time() < deadline:
        count = db_scalar(url, "SELECT count(*) FROM reading_data")
        queued = db_scalar(url, "SELECT count(*) FROM detection_queue")
        busy = handle.services.pipeline.pending_rows
        quiet = quiet + 1 if (count == last and queued == 0 and busy == 0) else 0
        if quiet >= 4:
            return
        last = count
        await asyncio.sleep(1.0)
    raise AssertionError("ingest and detection did not settle in time")


async def test_labelled_fleet_precision_and_recall_per_kind(
    gateway: GatewayHandle, gateway_settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    url = gateway_settings.database_url.get_secret_value()
    start = (datetime.now(UTC) - timedelta(days=32)).replace(minute=0, second=0, microsecond=0)
    fleet = plan_labelled_fleet(seed=7, meters=500, days=30, start=start)
    utilities = {r.meter_id: r.utility for r in fleet.registry}
    register(url, fleet)
    messages: list[tuple[str, bytes]] = []
    truth: list[FaultRecord] = []
    for item in generate(fleet, Topics(topic_prefix)):
        if isinstance(item, FaultRecord):
            truth.append(item)
        else:
            messages.append(item)
    # Every detected kind at least 10 times; split kinds on both utilities.
    for kind in DETECTED:
        on = [utilities[r.meter_id] for r in truth if r.kind.value == kind]
        assert len(on) >= 10, kind
        if kind in ("reverse_flow", "stuck_register", "register_rollback"):
            assert {"water", "electricity"} <= set(on), kind
    negatives = {r.kind.value for r in truth} - set(DETECTED)
    assert negatives == {"register_rollover", "duplicate", "out_of_order", "malformed_payload"}

    async with MqttTestClient(mqtt_url) as client:
        await client.publish_all(messages)
    await settle(url, gateway, timeout=1200)

    faults = [Labelled(r.meter_id, r.kind.value, r.start, r.end) for r in truth]
    scores = score(faults, load_alerts(url))
    table = render(scores)
    print("\n" + table)
    failing = [s.kind for s in scores if s.precision < 0.95 or s.recall < 0.95]
    if failing:
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                'SELECT meter_id, kind, start, "end", evidence FROM alerts'
                " WHERE kind = ANY(%s) ORDER BY meter_id, start",
                (failing,),
            ).fetchall()
        labels = [f for f in faults if f.kind in failing]
        pytest.fail(f"{table}\nalerts: {rows}\nfaults: {labels}")
    assert db_scalar(url, "SELECT count(*) FROM dead_letters") > 0  # malformed stayed dead
    assert db_scalar(url, "SELECT count(*) FROM alert_outbox") >= sum(s.alerts for s in scores)
