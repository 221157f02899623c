"""Vending's audit records through the real audit middleware: one specific record per
operation, written in the operation's own transaction, with the client's address and the
HTTP request id; the middleware's generic record only where the service never recorded."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from gateway.http.security import install_audit
from tests.vending.conftest import Vend, build_app


async def audit_rows(vend: Vend, actor: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(vend.database_url) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT action, object, outcome, source, request_id, detail FROM audit_log"
            " WHERE actor = %s ORDER BY id",
            (actor,),
        )
        return await cur.fetchall()


async def test_a_sale_its_replay_and_its_refusals_are_each_recorded_once(vend: Vend) -> None:
    app = build_app(vend.service)
    install_audit(app, app.state.access)
    vendor = await vend.vendor("30.00")
    name = await vend.vendor_name(vendor)
    meter = await vend.meter()
    sale = {"request_id": "till-audit-1", "meter": meter, "amount": "20.00"}
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://vend.test") as client:
        first = await client.post(
            "/vend/v1/credit", json=sale, headers={**vendor, "X-Request-ID": "http-1"}
        )
        again = await client.post(
            "/vend/v1/credit", json=sale, headers={**vendor, "X-Request-ID": "http-2"}
        )
        refused = await client.post(
            "/vend/v1/credit",
            json={**sale, "request_id": "till-audit-2"},
            headers={**vendor, "X-Request-ID": "http-3"},
        )
        invalid = await client.post(
            "/vend/v1/credit",
            json={**sale, "amount": "1.234"},
            headers={**vendor, "X-Request-ID": "http-4"},
        )
    assert first.status_code == 200 and again.content == first.content
    assert first.headers["X-Request-ID"] == "http-1"
    assert refused.status_code == 402 and invalid.status_code == 422
    receipt_no = first.json()["receipt_no"]
    rows = await audit_rows(vend, name)
    summary = [
        (
            r["action"],
            r["outcome"],
            r["source"],
            r["request_id"],
            r["detail"].get("http_request_id"),
        )
        for r in rows
    ]
    assert summary == [
        ("vend.credit", "issued", "192.0.2.7", "till-audit-1", "http-1"),
        ("vend.credit", "replayed", "192.0.2.7", "till-audit-1", "http-2"),
        ("vend.credit", "insufficient_float", "192.0.2.7", "till-audit-2", "http-3"),
        ("POST /vend/v1/credit", "failed:402", "192.0.2.7", "http-3", None),
        ("POST /vend/v1/credit", "failed:422", "192.0.2.7", "http-4", None),
    ]
    assert rows[0]["object"] == f"meter:{meter}"
    assert rows[0]["detail"]["receipt_no"] == receipt_no
