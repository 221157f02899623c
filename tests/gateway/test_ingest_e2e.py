"""Telemetry through the real broker into the real database, via a running gateway."""

from __future__ import annotations

import asyncio
import calendar
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from gateway.http.security import Role
from gateway.service import GatewayHandle
from gateway.settings import Settings
from protocols import BinaryRow, encode_frame
from tests.plugins.auth import AuthHeaders
from tests.plugins.gateway import MqttTestClient, db_scalar, wait_for_value

T0_MS = calendar.timegm((2026, 11, 1, 0, 0, 0)) * 1000


def telemetry(meter: str, k: int, value: float) -> bytes:
    return json.dumps({"ts": T0_MS + k * 900_000, "values": {"1.8.0": value}}).encode()


async def test_json_and_binary_readings_are_stored_once(
    gateway: GatewayHandle, gateway_settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    url = gateway_settings.database_url.get_secret_value()
    batch = json.dumps(
        [{"ts": T0_MS + k * 900_000, "values": {"24.2.1": 10 + k / 10}} for k in range(96)]
    ).encode()
    frame = encode_frame(
        T0_MS, ["1.8.0", "32.7.0"], [BinaryRow(k * 60_000, [k, 230.0]) for k in range(10)]
    )
    async with MqttTestClient(mqtt_url) as client:
        await client.publish_all(
            [
                (f"{topic_prefix}meters/W1/telemetry", batch),
                (f"{topic_prefix}meters/W1/telemetry", batch),  # duplicate delivery
                (f"{topic_prefix}meters/E1/telemetry", frame),
                (f"{topic_prefix}meters/E1/telemetry", telemetry("E1", 0, 0.0)),  # same as row 0
            ]
        )
    count = "SELECT count(*) FROM readings WHERE meter_id = %s"
    assert await wait_for_value(lambda: db_scalar(url, count, ("W1",)), 96) == 96
    assert await wait_for_value(lambda: db_scalar(url, count, ("E1",)), 20) == 20
    metrics = gateway.services.metrics
    assert await wait_for_value(metrics.readings_duplicate._value.get, 97.0) == 97.0
    # Unknown meters are auto-registered as unverified and their last-seen is kept.
    assert (
        db_scalar(url, "SELECT count(*) FROM meters WHERE NOT verified AND last_seen IS NOT NULL")
        == 2
    )


async def test_bad_payloads_are_dead_lettered_and_ingest_continues(
    gateway: GatewayHandle, gateway_settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    url = gateway_settings.database_url.get_secret_value()
    bad = [
        (f"{topic_prefix}meters/M1/telemetry", b"{oops"),
        (f"{topic_prefix}meters/M1/telemetry", b'{"ts": 1, "values": {"1.8.0": 1}}'),
        (
            f"{topic_prefix}meters/M1/telemetry",
            b'{"ts": "2026-11-01T00:00:00Z", "values": {"x": 1}}',
        ),
        (f"{topic_prefix}meters/M1/events", b'{"ts": "2026-11-01T00:00:00Z", "type": "party"}'),
        (f"{topic_prefix}concentrators/DC1/telemetry", b"[]"),
    ]
    async with MqttTestClient(mqtt_url) as client:
        await client.publish_all(bad)
        await client.publish_all([bad[0]])  # the same bad message again: stored once
        await client.publish_all([(f"{topic_prefix}meters/M1/telemetry", telemetry("M1", 1, 5.0))])
    assert await wait_for_value(lambda: db_scalar(url, "SELECT count(*) FROM readings"), 1) == 1
    assert (
        await wait_for_value(lambda: db_scalar(url, "SELECT sum(deliveries) FROM dead_letters"), 6)
        == 6
    )
    assert db_scalar(url, "SELECT count(*) FROM dead_letters") == 5
    reasons = db_scalar(url, "SELECT array_agg(reason ORDER BY id) FROM dead_letters")
    assert sorted(reasons) == sorted(
        ["bad_json", "absurd_timestamp", "unknown_channel", "unknown_event", "bad_frame"]
    )
    bad_json = "FROM dead_letters WHERE reason = 'bad_json'"
    assert db_scalar(url, f"SELECT payload {bad_json}") == b"{oops"
    assert db_scalar(url, f"SELECT deliveries {bad_json}") == 2


async def test_json_storage_refuses_never_reaches_the_database(
    gateway: GatewayHandle, gateway_settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    """NaN, \\u0000 and a 400-digit number are dead letters of their own: the messages around
    them commit in the same batch, none is refused by PostgreSQL (storage_rejected)."""
    url = gateway_settings.database_url.get_secret_value()
    ts = '"2026-11-01T00:00:00Z"'
    messages = [
        (f"{topic_prefix}meters/N1/status", b'{"state":"online","credit":NaN}'),
        (f"{topic_prefix}meters/N1/status", b'{"state":"online","credit":' + b"9" * 400 + b"}"),
        (
            f"{topic_prefix}meters/N1/events",
            f'{{"ts":{ts},"type":"low_battery","details":{{"v":"\\u0000"}}}}'.encode(),
        ),
        (f"{topic_prefix}meters/N1/events", f'{{"ts":{ts},"type":"low_battery"}}'.encode()),
        (f"{topic_prefix}meters/N1/telemetry", telemetry("N1", 0, 1.0)),
    ]
    async with MqttTestClient(mqtt_url) as client:
        await client.publish_all(messages)
    assert await wait_for_value(lambda: db_scalar(url, "SELECT count(*) FROM dead_letters"), 3) == 3
    assert await wait_for_value(lambda: db_scalar(url, "SELECT count(*) FROM readings"), 1) == 1
    assert db_scalar(url, "SELECT count(*) FROM meter_events") == 1
    assert db_scalar(url, "SELECT array_agg(DISTINCT reason) FROM dead_letters") == ["bad_json"]


async def test_reading_conflicts_and_quality_upgrades_are_kept_and_counted(
    gateway: GatewayHandle, gateway_settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    url = gateway_settings.database_url.get_secret_value()

    def body(value: float, quality: str, k: int = 0) -> bytes:
        return json.dumps(
            {"ts": T0_MS + k * 900_000, "values": {"1.8.0": value}, "quality": quality}
        ).encode()

    topic = f"{topic_prefix}meters/Q1/telemetry"
    async with MqttTestClient(mqtt_url) as client:
        for message in (body(5.0, "estimated"), body(7.0, "measured", 1)):
            await client.publish_all([(topic, message)])
        await wait_for_value(lambda: db_scalar(url, "SELECT count(*) FROM readings"), 2)
        for message in (body(5.5, "measured"), body(7.5, "measured", 1), body(4.0, "estimated")):
            await client.publish_all([(topic, message)])
    conflicts = "SELECT count(*) FROM reading_conflicts"
    assert await wait_for_value(lambda: db_scalar(url, conflicts), 1) == 1
    values = "SELECT array_agg((value, quality)::text ORDER BY ts) FROM readings"
    assert await wait_for_value(
        lambda: db_scalar(url, values), ["(5.5,measured)", "(7,measured)"]
    ) == ["(5.5,measured)", "(7,measured)"]
    assert db_scalar(url, "SELECT array[value, stored_value] FROM reading_conflicts") == [7.5, 7.0]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
        text = (await http.get("/metrics")).text
    assert "gateway_reading_conflicts_total 1.0" in text
    assert "gateway_readings_replaced_total 1.0" in text
    assert "gateway_readings_superseded_total 1.0" in text


async def test_local_times_are_read_in_the_registered_zone_at_once(
    gateway: GatewayHandle,
    gateway_settings: Settings,
    mqtt_url: str,
    topic_prefix: str,
    auth_headers: AuthHeaders,
) -> None:
    """Register a zone, then send a reading without offset: stored at the right UTC instant."""
    url = gateway_settings.database_url.get_secret_value()
    instant = "SELECT array_agg(ts ORDER BY ts) FROM readings WHERE meter_id = %s"

    def local(ts: str, value: float = 1.0) -> bytes:
        return json.dumps({"ts": ts, "values": {"1.8.0": value}}).encode()

    http = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.http_port}",
        headers=await auth_headers(url, Role.OPERATOR),
    )
    async with http, MqttTestClient(mqtt_url) as client:
        put = await http.put(
            "/meters/TZ1", json={"utility": "electricity", "time_zone": "Africa/Johannesburg"}
        )
        assert put.status_code == 200, put.text
        await client.publish_all(
            [(f"{topic_prefix}meters/TZ1/telemetry", local("2026-11-01T10:00:00"))]
        )
        expected = [datetime(2026, 11, 1, 8, 0, tzinfo=UTC)]
        assert (
            await wait_for_value(lambda: db_scalar(url, instant, ("TZ1",)), expected, timeout=10)
            == expected
        )
        # Moving the meter to a DST zone applies to the next message: summer, winter, and the
        # repeated hour of the autumn change (the later instant is taken).
        put = await http.put(
            "/meters/TZ1", json={"utility": "electricity", "time_zone": "Europe/Berlin"}
        )
        assert put.status_code == 200, put.text
        await client.publish_all(
            [
                (f"{topic_prefix}meters/TZ1/telemetry", local("2026-07-01T12:00:00")),
                (f"{topic_prefix}meters/TZ1/telemetry", local("2026-10-25T02:30:00")),
                (
                    f"{topic_prefix}meters/TZ1/events",
                    b'{"ts":"2026-02-01T12:00:00","type":"power_up"}',
                ),
            ]
        )
    expected = [
        datetime(2026, 7, 1, 10, 0, tzinfo=UTC),
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
        datetime(2026, 11, 1, 8, 0, tzinfo=UTC),
    ]
    assert (
        await wait_for_value(lambda: db_scalar(url, instant, ("TZ1",)), expected, timeout=10)
        == expected
    )
    event = "SELECT {} FROM meter_events WHERE meter_id = 'TZ1'"
    assert await wait_for_value(lambda: db_scalar(url, event.format("count(*)")), 1) == 1
    assert db_scalar(url, event.format("ts")) == datetime(2026, 2, 1, 11, 0, tzinfo=UTC)
    assert db_scalar(url, event.format("raw_ts")) == "2026-02-01T12:00:00"
    raw_ts = "SELECT array_agg(raw_ts ORDER BY ts) FROM readings WHERE meter_id = 'TZ1'"
    assert db_scalar(url, raw_ts) == [
        "2026-07-01T12:00:00",
        "2026-10-25T02:30:00",
        "2026-11-01T10:00:00",
    ]


async def test_events_and_retained_status_update_the_registry(
    gateway: GatewayHandle, gateway_settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    url = gateway_settings.database_url.get_secret_value()
    async with MqttTestClient(mqtt_url) as client:
        await client.publish_all(
            [
                (
                    f"{topic_prefix}meters/E7/events",
                    b'[{"ts": "2026-11-01T01:00:00Z", "type": "tamper_cover_open"},'
                    b' {"ts": "2026-11-01T01:05:00Z", "type": "magnetic_field",'
                    b'  "details": {"mT": 80}}]',
                )
            ]
        )
        await client.publish_all(
            [(f"{topic_prefix}meters/E7/status", b'{"state": "online", "relay": "disconnected"}')],
            retain=True,
        )
        await client.publish_all([(f"{topic_prefix}meters/E7/status", b"")], retain=True)
    assert (
        await wait_for_value(
            lambda: db_scalar(url, "SELECT count(*) FROM meter_events WHERE meter_id = 'E7'"), 2
        )
        == 2
    )
    assert (
        await wait_for_value(
            lambda: db_scalar(url, "SELECT status->>'relay' FROM meters WHERE meter_id = 'E7'"),
            "disconnected",
        )
        == "disconnected"
    )
    assert db_scalar(url, "SELECT online FROM meters WHERE meter_id = 'E7'") is True


async def test_health_readiness_and_metrics_endpoints(gateway: GatewayHandle) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        metrics = (await http.get("/metrics")).text
        assert "gateway_readings_stored_total" in metrics
        assert "gateway_mqtt_connected 1.0" in metrics
        assert (await http.get("/docs")).status_code == 200


async def test_meter_registry_api(
    gateway: GatewayHandle,
    gateway_settings: Settings,
    mqtt_url: str,
    topic_prefix: str,
    auth_headers: AuthHeaders,
) -> None:
    async with MqttTestClient(mqtt_url) as client:
        await client.publish_all(
            [(f"{topic_prefix}meters/AUTO1/telemetry", telemetry("A", 0, 1.0))]
        )
    url = gateway_settings.database_url.get_secret_value()
    assert await wait_for_value(lambda: db_scalar(url, "SELECT count(*) FROM meters"), 1) == 1
    operator = await auth_headers(url, Role.OPERATOR)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.http_port}", headers=operator
    ) as http:
        auto = (await http.get("/meters/AUTO1")).json()
        assert (auto["verified"], auto["utility"], auto["comms_state"]) == (False, "unknown", "ok")
        assert [m["meter_id"] for m in (await http.get("/meters?verified=false")).json()] == [
            "AUTO1"
        ]
        confirmed = await http.post("/meters/AUTO1/verify")
        assert confirmed.json()["verified"] is True
        created = await http.put(
            "/meters/MB-7",
            json={
                "utility": "electricity",
                "transport": "modbus",
                "modbus_host": "10.0.0.5",
                "modbus_port": 502,
                "modbus_unit": 7,
                "modbus_word_order": "CDAB",
            },
        )
        assert created.status_code == 200, created.text
        assert created.json()["comms_state"] == "never"
        page1 = (await http.get("/meters?limit=1")).json()
        page2 = (await http.get(f"/meters?limit=1&after={page1[0]['meter_id']}")).json()
        assert [page1[0]["meter_id"], page2[0]["meter_id"]] == ["AUTO1", "MB-7"]
        missing = await http.get("/meters/NOPE")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        bad = await http.put("/meters/MB-8", json={"utility": "electricity", "transport": "modbus"})
        assert bad.status_code == 422
        bad_map = await http.put(
            "/meters/MB-9",
            json={
                "utility": "electricity",
                "transport": "modbus",
                "modbus_host": "10.0.0.5",
                "modbus_port": 502,
                "modbus_unit": 9,
                "register_map": {"1.8.0": {"addr": 1}},
            },
        )
        assert bad_map.status_code == 422 and "register map" in bad_map.text
        assert (await http.put("/meters/x", json={"utility": "gas"})).status_code == 422
        assert (await http.get("/meters/bad%20id")).status_code == 422


@pytest.mark.parametrize("mode", [[], ["--binary"], ["--binary", "--concentrator"]])
async def test_simulated_fleet_load_is_stored_exactly(
    gateway: GatewayHandle,
    gateway_settings: Settings,
    mqtt_url: str,
    topic_prefix: str,
    mode: list[str],
) -> None:
    """The fleet's `load` command through the real broker: every reading sent is stored."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "firmware-sim"),
        "load",
        "--meters",
        "12",
        "--readings",
        "96",
        "--batch",
        "24",
        "--broker",
        mqtt_url,
        "--prefix",
        topic_prefix,
        "--seed",
        "7",
        "--no-progress",
        *mode,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out
    url = gateway_settings.database_url.get_secret_value()
    count = "SELECT count(*) FROM readings"
    assert await wait_for_value(lambda: db_scalar(url, count), 12 * 96) == 12 * 96
    assert db_scalar(url, "SELECT count(DISTINCT meter_id) FROM readings") == 12
    assert db_scalar(url, "SELECT count(*) FROM dead_letters") == 0
