"""The JSON behind the field page: registry location fields, search, card, readings, tokens,
events, and Idempotency-Key on state-changing requests."""

from __future__ import annotations

import psycopg

from tests.web.conftest import Field
from tokens.meter_number import luhn_check_digit


async def test_location_fields_are_stored_and_validated(field: Field) -> None:
    got = await field.put_meter(
        "E1",
        utility="electricity",
        address="3 Protea Road",
        area="Arcadia",
        latitude=-25.74,
        longitude=28.21,
    )
    assert (got["address"], got["area"], got["latitude"], got["longitude"]) == (
        "3 Protea Road",
        "Arcadia",
        -25.74,
        28.21,
    )
    again = (await field.http.get("/meters/E1", headers=field.technician)).json()
    assert again["area"] == "Arcadia"
    half = await field.http.put(
        "/meters/E1", json={"utility": "electricity", "latitude": 1.0}, headers=field.operator
    )
    assert half.status_code == 422
    far = await field.http.put(
        "/meters/E1",
        json={"utility": "electricity", "latitude": 91, "longitude": 0},
        headers=field.operator,
    )
    assert far.status_code == 422


async def test_search_by_number_with_or_without_check_digit_account_and_address(
    field: Field,
) -> None:
    number = "0123456789"
    full = number + str(luhn_check_digit(number))
    await field.put_meter(number, utility="water", account="ACC-77", address="9 Baobab Lane")
    await field.put_meter("OTHER", utility="water", address="1 Elsewhere")
    for query in (number, full, "ACC-77", "baobab"):
        found = await field.http.get("/meters", params={"q": query}, headers=field.technician)
        assert found.status_code == 200, found.text
        assert [m["meter_id"] for m in found.json()] == [number], query
    none = await field.http.get("/meters", params={"q": "nowhere"}, headers=field.technician)
    assert none.json() == []
    await field.put_meter("IN-AREA", utility="water", area="Sunnyside")
    listed = await field.http.get("/meters", params={"area": "Sunnyside"}, headers=field.technician)
    assert [m["meter_id"] for m in listed.json()] == ["IN-AREA"]


async def test_card_readings_events_and_tokens(field: Field) -> None:
    await field.put_meter("E2", utility="electricity")
    async with await psycopg.AsyncConnection.connect(field.url) as conn:
        await conn.execute(
            "INSERT INTO reading_data (meter_id, channel, ts, value) VALUES"
            " ('E2', '1.8.0', now() - interval '2 hours', 10.0),"
            " ('E2', '1.8.0', now() - interval '1 hour', 12.5),"
            " ('E2', '32.7.0', now() - interval '1 hour', 231.0)"
        )
        await conn.execute(
            "INSERT INTO meter_events (meter_id, ts, type, event_key)"
            " VALUES ('E2', now(), 'relay_opened', 'relay_opened@1')"
        )
        await conn.commit()
    card = await field.http.get("/meters/E2/card", headers=field.technician)
    assert card.status_code == 200, card.text
    body = card.json()
    latest = {r["channel"]: (r["value"], r["unit"]) for r in body["latest"]}
    assert latest == {"1.8.0": (12.5, "kWh"), "32.7.0": (231.0, "V")}
    assert [e["type"] for e in body["events"]] == ["relay_opened"]
    assert body["commands_available"] is True
    assert body["commands"] == []
    assert body["comms"]["age"] == "never"
    readings = await field.http.get(
        "/meters/E2/readings",
        params={"channel": "1.8.0", "interval": "hour"},
        headers=field.technician,
    )
    assert readings.status_code == 200, readings.text
    assert [b["last_value"] for b in readings.json()["buckets"]] == [10.0, 12.5]
    assert (await field.http.get("/meters/E2/tokens", headers=field.technician)).json() == []
    # A command ordered through the API is on the card, as in GET /meters/{id}/commands.
    ordered = await field.http.post(
        "/meters/E2/commands",
        json={"action": "read_state", "reason": "field visit"},
        headers=field.technician,
    )
    assert ordered.status_code == 202, ordered.text
    history = (await field.http.get("/meters/E2/commands", headers=field.technician)).json()
    card_commands = (await field.http.get("/meters/E2/card", headers=field.technician)).json()[
        "commands"
    ]
    assert [(c["command_id"], c["action"], c["state"]) for c in card_commands] == [
        (ordered.json()["command_id"], "read_state", "planned")
    ]
    assert card_commands == history["commands"]
    assert (await field.http.get("/meters/E2/card")).status_code == 401
    missing = await field.http.get("/meters/NOPE/card", headers=field.technician)
    assert missing.status_code == 404
    bad = await field.http.get(
        "/meters/E2/readings",
        params={
            "channel": "1.8.0",
            "since": "2026-01-02T00:00:00Z",
            "until": "2026-01-01T00:00:00Z",
        },
        headers=field.technician,
    )
    assert bad.status_code == 422


async def test_an_idempotency_key_applies_an_action_once(field: Field) -> None:
    await field.leaking_meter("W1")
    alerts = await field.http.get(
        "/alerts", params={"meter_id": "W1", "state": "open"}, headers=field.technician
    )
    alert_id = alerts.json()["items"][0]["id"]
    headers = {**field.technician, "Idempotency-Key": "key-0001-abcdef"}
    first = await field.http.post(
        f"/alerts/{alert_id}/acknowledge", json={"note": "on my way"}, headers=headers
    )
    second = await field.http.post(
        f"/alerts/{alert_id}/acknowledge", json={"note": "on my way"}, headers=headers
    )
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert second.headers.get("idempotent-replayed") == "true"
    assert second.json() == first.json()
    other = await field.http.post(
        f"/alerts/{alert_id}/resolve", json={"note": "x"}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"  # the API's one shape
    bad = await field.http.post(
        f"/alerts/{alert_id}/resolve", json={"note": "x"},
        headers={**field.technician, "Idempotency-Key": "no spaces"},
    )  # fmt: skip
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_request")
    async with await psycopg.AsyncConnection.connect(field.url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM audit_log WHERE action LIKE 'POST /alerts/%%/acknowledge'"
        )
        row = await cur.fetchone()
    assert row is not None and row[0] == 1
