"""The billing HTTP API on a running gateway: reads, review list, export downloads."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import psycopg
import pyarrow.parquet as pq
import pytest

from gateway.http.security import Role
from gateway.service import GatewayHandle
from gateway.settings import Settings
from tests.billing.helpers import (
    NOV_CLOSE,
    NOV_OPEN,
    add_meter,
    add_readings,
    add_silent_meter,
    bill_november_then_read,
    csv_rows,
)
from tests.plugins.gateway import gateway_running

Auth = Callable[[str, Role], Awaitable[dict[str, str]]]


@pytest.fixture
def seeded(gateway_settings: Settings) -> str:
    url = gateway_settings.database_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as conn:
        add_meter(conn, "E1", "electricity")
        add_readings(conn, "E1", "1.8.0", [(NOV_OPEN, 1000.0), (NOV_CLOSE, 1360.0)])
        add_meter(conn, "W1", "water")
        add_readings(conn, "W1", "24.2.1", [(NOV_OPEN, 50.0), (NOV_CLOSE, 62.5)])
    return url


async def test_reads_and_review_over_http(
    seeded: str,
    gateway: GatewayHandle,
    auth_headers: Auth,
) -> None:
    tech = await auth_headers(seeded, Role.TECHNICIAN)
    operator = await auth_headers(seeded, Role.OPERATOR)
    vendor = await auth_headers(seeded, Role.VENDOR)
    body = {
        "value": 1100.25,
        "read_at": "2026-11-10T09:15:00+02:00",
        "source": "meter_reader",
        "reader": "R. Mokoena",
        "photo_ref": "s3://reads/e1-1110.jpg",
    }
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
        assert (await http.post("/meters/E1/reads", json=body)).status_code == 401
        assert (await http.post("/meters/E1/reads", json=body, headers=vendor)).status_code == 403
        created = await http.post("/meters/E1/reads", json=body, headers=tech)
        assert created.status_code == 201, created.text
        read = created.json()
        assert (read["status"], read["register"], read["value"]) == ("accepted", "1.8.0", 1100.25)
        assert read["read_at"].startswith("2026-11-10T07:15:00")
        with psycopg.connect(seeded) as conn:
            audited = conn.execute(
                "SELECT outcome FROM audit_log WHERE action = 'billing.read.submit'"
            ).fetchall()
        assert audited, "the read was not audited"

        again = await http.post("/meters/E1/reads", json=body, headers=tech)
        assert (again.status_code, again.json()["id"]) == (200, read["id"])
        conflict = await http.post("/meters/E1/reads", json={**body, "value": 1100.5}, headers=tech)
        assert conflict.status_code == 409
        assert conflict.json()["error"]["code"] == "conflict"
        for bad in (
            {**body, "value": -1},
            {**body, "read_at": "2026-11-10T09:15:00"},  # no offset
            {**body, "read_at": "2999-01-01T00:00:00Z"},
            {**body, "read_at": "0001-01-01T00:30:00+01:00"},  # a BC instant in UTC
            {**body, "read_at": "1999-12-31T23:59:59Z"},
            {**body, "source": "postman"},
            {**body, "value": "1e999"},
        ):
            refused = await http.post("/meters/E1/reads", json=bad, headers=tech)
            assert refused.status_code == 422, (bad, refused.text)
        export_register = await http.post(
            "/meters/E1/reads", json={**body, "register": "2.8.0", "value": 7}, headers=tech
        )
        assert export_register.status_code == 201
        assert (export_register.json()["register"], export_register.json()["status"]) == (
            "2.8.0",
            "accepted",
        )
        unknown = await http.post("/meters/NOPE/reads", json=body, headers=tech)
        assert unknown.status_code == 404

        # a customer's read above the later telemetry is held for review
        low = await http.post(
            "/meters/W1/reads",
            json={"value": 70, "read_at": "2026-11-20T08:00:00Z", "source": "customer"},
            headers=tech,
        )
        assert low.status_code == 201
        assert (low.json()["status"], low.json()["reason"]) == ("rejected", "above_following_read")

        assert (await http.get("/billing/reviews", headers=tech)).status_code == 403
        reviews = (await http.get("/billing/reviews", headers=operator)).json()
        assert [r["id"] for r in reviews] == [low.json()["id"]]
        decided = await http.post(
            f"/billing/reviews/{low.json()['id']}", json={"decision": "reject"}, headers=operator
        )
        assert decided.status_code == 200 and decided.json()["reviewed_by"]
        assert (await http.get("/billing/reviews", headers=operator)).json() == []
        gone = await http.post(
            f"/billing/reviews/{low.json()['id']}", json={"decision": "accept"}, headers=operator
        )
        assert gone.status_code == 404


async def test_export_download(seeded: str, gateway: GatewayHandle, auth_headers: Auth) -> None:
    operator = await auth_headers(seeded, Role.OPERATOR)
    tech = await auth_headers(seeded, Role.TECHNICIAN)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
        url = "/billing/export?period=2026-11"
        assert (await http.get(url, headers=tech)).status_code == 403
        async with http.stream("GET", url, headers=operator) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/csv")
            assert 'filename="billing-2026-11.csv"' in response.headers["content-disposition"]
            data = b"".join([chunk async for chunk in response.aiter_bytes()])
        rows = csv_rows(data)
        assert [(r["meter_id"], r["consumption"]) for r in rows] == [
            ("E1", "360.000"),
            ("W1", "12.500"),
        ]
        parquet = await http.get(url + "&format=parquet&utility=water", headers=operator)
        assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
        table = pq.read_table(io.BytesIO(parquet.content))
        assert table.column("consumption").to_pylist() == [Decimal("12.500")]
        for bad in (
            "period=2026-13",
            "period=0000-01",
            "period=2026-11&format=xlsx",
            "period=2026-11&utility=gas",
        ):
            bad_response = await http.get(f"/billing/export?{bad}", headers=operator)
            assert bad_response.status_code == 422
        corrections = await http.get("/billing/corrections", headers=operator)
        assert corrections.status_code == 200
        assert corrections.text.splitlines()[0].startswith("meter_id,register,period,boundary")


async def test_corrections_download_follows_the_configured_policy(
    gateway_settings: Settings, auth_headers: Auth, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = gateway_settings.database_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as conn:
        add_silent_meter(conn)
    await bill_november_then_read(url)
    operator = await auth_headers(url, Role.OPERATOR)
    monkeypatch.setenv("GATEWAY_BILLING_INTERPOLATION_HOURS", "48")
    async with (
        gateway_running(gateway_settings) as gateway,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http,
    ):
        answer = await http.get("/billing/corrections?period=2026-11", headers=operator)
    assert answer.status_code == 200, answer.text
    rows = [
        (r["boundary"], r["estimated_consumption"], r["actual_consumption"])
        for r in csv_rows(answer.content)
    ]
    # with the 48 h window the 2 November read (935) covers November's opening too
    assert rows == [("closing", "300.000", "230.833"), ("opening", "230.833", "215.000")]
    async with (
        gateway_running(gateway_settings) as gateway,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http,
    ):
        first = await http.get("/billing/corrections?new=true", headers=operator)
        again = await http.get("/billing/corrections?new=true", headers=operator)
    assert [r["boundary"] for r in csv_rows(first.content)] == ["closing", "opening"]
    assert (again.status_code, csv_rows(again.content)) == (200, [])
    with psycopg.connect(url) as conn:
        actors = conn.execute(
            "SELECT actor FROM audit_log WHERE action = 'billing.corrections.deliver'"
        ).fetchall()
    assert len(actors) == 1 and actors[0][0].startswith("test-operator")


async def test_a_meters_size_class_sets_the_limit_its_reads_are_judged_by(
    seeded: str, gateway: GatewayHandle, auth_headers: Auth
) -> None:
    tech = await auth_headers(seeded, Role.TECHNICIAN)
    operator = await auth_headers(seeded, Role.OPERATOR)
    meter = {"utility": "water", "time_zone": "Africa/Johannesburg"}
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)

    def read(days: int, value: float) -> dict[str, object]:
        when = (start + timedelta(days=days)).isoformat()
        return {"value": value, "read_at": when, "source": "customer"}

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
        refused = await http.put("/meters/W9", json={**meter, "size": "25mm"}, headers=tech)
        assert refused.status_code == 403
        for bad in ("", "-25mm", "x" * 33, "25 mm"):
            answer = await http.put("/meters/W9", json={**meter, "size": bad}, headers=operator)
            assert answer.status_code == 422, bad
        plain = await http.put("/meters/W9", json=meter, headers=operator)
        assert (plain.status_code, plain.json()["size"]) == (200, None)
        with psycopg.connect(seeded, autocommit=True) as conn:
            add_readings(conn, "W9", "24.2.1", [(start, 100.0)])
        # 20 m3 a day is more than a domestic connection's default 5 m3/day and within a
        # 25 mm meter's 20.
        sized = await http.put("/meters/W9", json={**meter, "size": "25mm"}, headers=operator)
        assert (sized.status_code, sized.json()["size"]) == (200, "25mm")
        kept = await http.put("/meters/W9", json=meter, headers=operator)
        assert kept.json()["size"] == "25mm", "an omitted size is left as recorded"
        judged = await http.post("/meters/W9/reads", json=read(1, 120.0), headers=tech)
        assert (judged.status_code, judged.json()["status"]) == (201, "accepted"), judged.text

        cleared = await http.put("/meters/W9", json={**meter, "size": "*"}, headers=operator)
        assert cleared.json()["size"] is None
        assert (await http.get("/meters/W9", headers=tech)).json()["size"] is None
        default = await http.post("/meters/W9/reads", json=read(2, 140.0), headers=tech)
        assert (default.json()["status"], default.json()["reason"]) == (
            "rejected",
            "implausible_consumption",
        )
