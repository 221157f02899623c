"""Detection against the real database: the loop, idempotent episodes, withdrawal, the outbox,
live silence, and the HTTP contract through a running gateway and the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.cli import main
from gateway.detection.model import Rules
from gateway.detection.service import DetectionOptions, Detector
from gateway.http.security import Role
from gateway.service import GatewayHandle
from gateway.settings import Settings
from tests.plugins.gateway import MqttTestClient, db_scalar, wait_for_value

T0 = datetime(2026, 11, 2, tzinfo=UTC)
Q = timedelta(minutes=15)
AuthHeaders = Callable[[str, Role], Awaitable[dict[str, str]]]


def at(k: int) -> datetime:
    return T0 + k * Q


def add_meter(url: str, meter_id: str, utility: str, **extra: object) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO meters (meter_id, utility, verified, reporting_interval_s,"
            " export_allowed, register_max) VALUES (%s, %s, true, 900, %s, %s)",
            (meter_id, utility, extra.get("export_allowed", False), extra.get("register_max")),
        )


def add_readings(
    url: str,
    meter_id: str,
    rows: list[tuple[str, datetime, float]],
    *,
    received: Callable[[datetime], datetime] | None = None,
) -> None:
    """Store readings as the ingest writer would, queueing the meter for detection."""
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            "INSERT INTO reading_data (meter_id, channel, ts, value, received_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [
                (meter_id, ch, ts, v, received(ts) if received else datetime.now(UTC))
                for ch, ts, v in rows
            ],
        )
        conn.execute(
            "INSERT INTO detection_queue (meter_id, lo, hi) VALUES (%s, %s, %s)",
            (meter_id, min(r[1] for r in rows), max(r[1] for r in rows)),
        )
        last = max(rows, key=lambda r: r[1])
        conn.execute(
            "UPDATE meters SET last_reading_ts = greatest(last_reading_ts, %s),"
            " last_seen = greatest(last_seen, %s) WHERE meter_id = %s",
            (last[1], received(last[1]) if received else datetime.now(UTC), meter_id),
        )


async def detect(url: str) -> None:
    async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
        await Detector(pool, DetectionOptions(Rules(), sweep_s=0.0)).run_round()


def alerts(url: str) -> list[tuple[str, str, datetime, datetime | None]]:
    with psycopg.connect(url) as conn:
        return [
            (r[0], r[1], r[2], r[3])
            for r in conn.execute('SELECT kind, state, start, "end" FROM alerts ORDER BY id')
        ]


async def test_rollback_opens_one_alert_with_one_notification_however_often_replayed(
    database_url: str,
) -> None:
    add_meter(database_url, "W1", "water")
    values = [100.0, 100.01, 100.02, 95.02, 95.03]
    add_readings(database_url, "W1", [("24.2.1", at(k), v) for k, v in enumerate(values)])
    await detect(database_url)
    assert alerts(database_url) == [("register_rollback", "closed", at(2), at(3))]
    # The same data again (a redelivery, a replay after a crash): nothing new.
    add_readings(database_url, "W1", [("24.2.1", at(k), v) for k, v in enumerate(values)])
    await detect(database_url)
    await detect(database_url)
    assert len(alerts(database_url)) == 1
    assert db_scalar(database_url, "SELECT count(*) FROM alert_outbox") == 1
    payload = db_scalar(database_url, "SELECT payload FROM alert_outbox")
    assert payload["kind"] == "register_rollback" and payload["meter_id"] == "W1"
    assert db_scalar(database_url, "SELECT count(*) FROM detection_queue") == 0


async def test_rollover_raises_nothing(database_url: str) -> None:
    add_meter(database_url, "E1", "electricity")
    values = [99999.1, 99999.6, 0.2, 0.7]
    add_readings(database_url, "E1", [("1.8.0", at(k), v) for k, v in enumerate(values)])
    await detect(database_url)
    assert alerts(database_url) == []


async def test_gap_alert_is_withdrawn_when_late_readings_fill_it(database_url: str) -> None:
    add_meter(database_url, "E2", "electricity")
    have = [k for k in range(12) if not 3 < k < 9]
    add_readings(database_url, "E2", [("1.8.0", at(k), 10.0 + k) for k in have])
    await detect(database_url)
    assert alerts(database_url) == [("comms_loss", "closed", at(3), at(9))]
    add_readings(database_url, "E2", [("1.8.0", at(k), 10.0 + k) for k in range(4, 9)])
    await detect(database_url)
    assert alerts(database_url) == []
    assert (
        db_scalar(database_url, "SELECT count(*) FROM alert_data WHERE withdrawn_at IS NOT NULL")
        == 1
    )


async def test_export_on_a_meter_allowed_to_export_is_not_reverse_flow(database_url: str) -> None:
    add_meter(database_url, "E3", "electricity", export_allowed=True)
    add_meter(database_url, "E4", "electricity")
    for meter in ("E3", "E4"):
        add_readings(database_url, meter, [("2.8.0", at(k), 5.0 + k * 0.3) for k in range(8)])
    await detect(database_url)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT meter_id, kind FROM alerts").fetchall()
    assert rows == [("E4", "reverse_flow")]


async def test_silence_of_a_live_meter_opens_at_once_and_the_backlog_closes_it(
    database_url: str,
) -> None:
    add_meter(database_url, "E5", "electricity")
    now = datetime.now(UTC).replace(microsecond=0)
    base = now - timedelta(hours=6)
    base -= timedelta(seconds=base.timestamp() % 900)

    def ts(k: int) -> datetime:
        return base + k * Q

    # Live until k=3 (received within seconds), then nothing for 5+ hours of receive time.
    add_readings(
        database_url,
        "E5",
        [("1.8.0", ts(k), 1.0 + k) for k in range(4)],
        received=lambda t: t + timedelta(seconds=4),
    )
    await detect(database_url)
    assert alerts(database_url) == [("comms_loss", "open", ts(3), None)]
    # The meter comes back: its backlog arrives late, then it is live again.
    back = ts(22) + timedelta(seconds=3)
    add_readings(
        database_url,
        "E5",
        [("1.8.0", ts(k), 1.0 + k) for k in range(4, 23)],
        received=lambda t: back if t < ts(22) else t + timedelta(seconds=3),
    )
    await detect(database_url)
    assert alerts(database_url) == [("comms_loss", "closed", ts(3), ts(22))]


async def test_clock_drift_on_live_messages_until_the_clock_is_adjusted(database_url: str) -> None:
    add_meter(database_url, "E6", "electricity")
    now = datetime.now(UTC).replace(microsecond=0)
    base = now - timedelta(hours=2)  # the last message is less than an hour old: no silence
    base -= timedelta(seconds=base.timestamp() % 900)

    def true(k: int) -> datetime:
        return base + k * Q

    add_readings(
        database_url, "E6", [("1.8.0", true(k), 1.0 + k) for k in range(3)],
        received=lambda t: t + timedelta(seconds=2),
    )  # fmt: skip
    # From k=3 the meter's clock runs 10 minutes ahead; each message still arrives at once.
    ahead = timedelta(seconds=600)
    add_readings(
        database_url, "E6", [("1.8.0", true(k) + ahead, 1.0 + k) for k in range(3, 7)],
        received=lambda t: t - ahead + timedelta(seconds=2),
    )  # fmt: skip
    await detect(database_url)
    assert alerts(database_url) == [("clock_drift", "open", true(3) + timedelta(seconds=2), None)]
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO meter_events (meter_id, ts, type, event_key)"
            " VALUES ('E6', %s, 'clock_adjusted', sha256('clock_adjusted'))",
            (true(7),),
        )
        conn.execute(
            "INSERT INTO detection_queue (meter_id, lo, hi) VALUES ('E6', %s, %s)",
            (true(7), true(7)),
        )
    await detect(database_url)
    assert alerts(database_url) == [
        ("clock_drift", "closed", true(3) + timedelta(seconds=2), true(7))
    ]


# --------------------------------------------------------------------------- through the API


async def test_alert_contract_through_broker_and_api(
    gateway: GatewayHandle,
    gateway_settings: Settings,
    mqtt_url: str,
    topic_prefix: str,
    auth_headers: AuthHeaders,
) -> None:
    url = gateway_settings.database_url.get_secret_value()
    tech = await auth_headers(url, Role.TECHNICIAN)
    vendor = await auth_headers(url, Role.VENDOR)
    operator = await auth_headers(url, Role.OPERATOR)
    base = f"http://127.0.0.1:{gateway.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        put = await http.put(
            "/meters/W9",
            json={"utility": "water", "export_allowed": False, "register_max": 99999.0},
            headers=operator,
        )
        assert put.status_code == 200, put.text
        got = (await http.get("/meters/W9", headers=tech)).json()
        assert (got["export_allowed"], got["register_max"]) == (False, 99999.0)

        ms = int(T0.timestamp() * 1000)
        readings = [
            {"ts": ms + k * 900_000, "values": {"24.2.1": v}}
            for k, v in enumerate([50.0, 50.01, 50.02, 45.0, 45.01])
        ]
        async with MqttTestClient(mqtt_url) as client:
            await client.publish_all(
                [
                    (f"{topic_prefix}meters/W9/telemetry", json.dumps(readings).encode()),
                    (f"{topic_prefix}meters/W9/telemetry", json.dumps(readings[::-1]).encode()),
                    (
                        f"{topic_prefix}meters/W9/events",
                        b'{"ts": "2026-11-02T00:20:00Z", "type": "tamper_cover_open"}',
                    ),
                    (f"{topic_prefix}meters/W9/telemetry", b'{"ts": oops'),
                ]
            )

        async def kinds() -> list[str]:
            page = (await http.get("/alerts", headers=tech)).json()
            return sorted(a["kind"] for a in page["items"])

        expected = ["register_rollback", "tamper_cover"]
        assert await wait_for_value(kinds, expected) == expected

        assert (await http.get("/alerts")).status_code == 401
        assert (
            await http.get("/alerts", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
        assert (await http.get("/alerts", headers=vendor)).status_code == 403

        page = (await http.get("/alerts", headers=tech, params={"limit": 1})).json()
        assert len(page["items"]) == 1 and page["next_cursor"]
        first = page["items"][0]
        assert set(first) == {
            "id", "meter_id", "kind", "state", "start", "end", "detected_at", "severity",
            "evidence", "acknowledged_by", "note",
        }  # fmt: skip
        rest = (
            await http.get("/alerts", headers=tech, params={"cursor": page["next_cursor"]})
        ).json()
        assert [a["id"] for a in rest["items"]] > [first["id"]] and rest["next_cursor"] is None

        opened = (
            await http.get("/meters/W9/alerts", headers=tech, params={"state": "open"})
        ).json()["items"]
        assert [a["kind"] for a in opened] == ["tamper_cover"]
        cover = opened[0]
        assert cover["start"].startswith("2026-11-02T00:20:00") and cover["end"] is None
        rollback = next(a for a in rest["items"] + [first] if a["kind"] == "register_rollback")
        assert rollback["severity"] == "critical" and rollback["evidence"]["drop"] > 5

        work = (await http.get("/worklist", headers=tech)).json()["items"]
        assert [w["meter_id"] for w in work] == ["W9"]
        assert work[0]["severity"] == "critical"

        ack = await http.post(
            f"/alerts/{rollback['id']}/acknowledge", headers=tech, json={"note": "on my way"}
        )
        assert ack.status_code == 200, ack.text
        assert ack.json()["acknowledged_by"] and ack.json()["note"] == "on my way"
        res = await http.post(
            f"/alerts/{cover['id']}/resolve", headers=tech, json={"note": "cover sealed"}
        )
        assert res.status_code == 200 and res.json()["state"] == "closed"
        assert (await http.get("/worklist", headers=tech)).json()["items"] == []
        missing = await http.post("/alerts/999999/resolve", headers=tech, json={"note": "x"})
        assert missing.status_code == 404
        bad = await http.get("/alerts", headers=tech, params={"cursor": "garbage"})
        assert bad.status_code == 422
        naive = await http.get("/alerts", headers=tech, params={"since": "2026-11-02T00:00:00"})
        assert naive.status_code == 422
    # The malformed payload stayed a dead letter and raised no alert.
    assert db_scalar(url, "SELECT count(*) FROM dead_letters") == 1
    assert db_scalar(url, "SELECT count(*) FROM alert_outbox") == 2


async def test_detect_score_command_prints_the_table(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_meter(database_url, "W1", "water")
    values = [100.0, 100.01, 100.02, 95.02, 95.03]
    add_readings(database_url, "W1", [("24.2.1", at(k), v) for k, v in enumerate(values)])
    await detect(database_url)
    truth = tmp_path / "truth.jsonl"
    truth.write_text(
        json.dumps(
            {"meter_id": "W1", "kind": "register_rollback", "start": at(3).isoformat(),
             "end": at(3).isoformat(), "params": {}, "completed": True}
        ) + "\n"
        + json.dumps(
            {"meter_id": "W2", "kind": "leak", "start": at(3).isoformat(),
             "end": at(30).isoformat(), "params": {}, "completed": True}
        ) + "\n"
    )  # fmt: skip
    monkeypatch.setenv("GATEWAY_DATABASE_URL", database_url)
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "text")
    assert main(["detect-score", "--truth", str(truth), "--json"]) == 0
    rows = {r["kind"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["register_rollback"] == {
        "kind": "register_rollback", "tp": 1, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0,
    }  # fmt: skip
    assert (rows["leak"]["tp"], rows["leak"]["fn"], rows["leak"]["recall"]) == (0, 1, 0.0)
    assert main(["detect-score", "--truth", str(tmp_path / "missing.jsonl")]) == 1


async def test_detection_survives_its_worker_process_dying(database_url: str) -> None:
    add_meter(database_url, "W7", "water")
    add_meter(database_url, "W8", "water")
    stop = asyncio.Event()
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
        detector = Detector(pool, DetectionOptions(Rules(), poll_s=0.05, worker=True))
        task = asyncio.create_task(detector.run(stop), name="detection")
        try:
            drop = [100.0, 100.01, 90.0]
            add_readings(database_url, "W7", [("24.2.1", at(k), v) for k, v in enumerate(drop)])
            count = "SELECT count(*) FROM alerts"
            assert await wait_for_value(lambda: db_scalar(database_url, count), 1) == 1
            executor = detector._executor
            assert executor is not None
            for process in list(executor._processes.values()):
                os.kill(process.pid, signal.SIGKILL)
            add_readings(database_url, "W8", [("24.2.1", at(k), v) for k, v in enumerate(drop)])
            assert await wait_for_value(lambda: db_scalar(database_url, count), 2) == 2
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
