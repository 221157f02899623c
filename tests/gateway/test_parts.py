"""GATEWAY_PARTS: the service split over processes — one ingests, another serves the API."""

from __future__ import annotations

import json

import httpx
import psycopg
import pytest

from gateway.errors import ConfigError
from gateway.http.security import Role
from gateway.settings import load_settings
from tests.plugins.auth import AuthHeaders
from tests.plugins.gateway import MqttTestClient, gateway_running, make_settings, wait_for_value


def stored(database_url: str, meter_id: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM readings WHERE meter_id = %s", (meter_id,))
        return int(row.fetchone()[0])  # type: ignore[index]


async def test_an_ingest_process_and_an_api_process_share_the_work(
    database_url: str, mqtt_url: str, topic_prefix: str, auth_headers: AuthHeaders
) -> None:
    ingest = make_settings(database_url, mqtt_url, topic_prefix, parts="ingest")
    api = make_settings(database_url, mqtt_url, topic_prefix, parts="http,detection,control")
    technician = await auth_headers(database_url, Role.TECHNICIAN)
    async with gateway_running(ingest) as ingesting, gateway_running(api) as serving:
        assert ingesting.http_port is None  # no HTTP part: nothing listens
        assert serving.services.mqtt.connected.is_set()
        assert not serving.services.mqtt.subscribed.is_set()  # publishes only, takes nothing
        async with MqttTestClient(mqtt_url) as client:
            body = json.dumps({"ts": "2026-11-01T10:00:00Z", "values": {"1.8.0": 12.5}})
            await client.publish_all([(f"{topic_prefix}meters/P1/telemetry", body.encode())])
        assert await wait_for_value(lambda: stored(database_url, "P1"), 1) == 1
        assert ingesting.services.intake.taken == 1
        assert serving.services.intake.taken == 0
        base = f"http://127.0.0.1:{serving.http_port}"
        async with httpx.AsyncClient(base_url=base, headers=technician) as http:
            assert (await http.get("/readyz")).status_code == 200
            meter = await http.get("/meters/P1")
            assert meter.status_code == 200, meter.text
            assert meter.json()["last_reading_ts"].startswith("2026-11-01T10:00:00")


def test_unknown_parts_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PARTS", "ingest,vending")
    with pytest.raises(ConfigError, match=r"GATEWAY_PARTS.*unknown parts"):
        load_settings()
