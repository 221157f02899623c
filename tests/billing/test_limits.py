"""Plausibility limits: listed and changed over HTTP (operator, audited) and on the command
line, and a change is what the next read is checked against."""

from __future__ import annotations

import getpass
import json
import subprocess
from typing import Any

import httpx
import psycopg
import pytest

from gateway.http.security import Role
from gateway.service import GatewayHandle
from tests.billing.helpers import add_meter, add_readings, run_cli, utc
from tests.plugins.auth import AuthHeaders

SEEDED = [  # migration 0007
    ("electricity", "*", 250.0, "kWh/day"),
    ("electricity", "60A", 250.0, "kWh/day"),
    ("electricity", "80A-3ph", 1000.0, "kWh/day"),
    ("water", "*", 5.0, "m3/day"),
    ("water", "15mm", 5.0, "m3/day"),
    ("water", "20mm", 10.0, "m3/day"),
    ("water", "25mm", 20.0, "m3/day"),
]


def _table(limits: list[dict[str, Any]]) -> list[tuple[str, str, float, str]]:
    return [(x["utility"], x["size"], x["max_per_day"], x["unit"]) for x in limits]


def _audit(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT actor, action, object, outcome, detail FROM audit_log"
            " WHERE action LIKE 'billing.limit%%' OR action LIKE 'PUT %%' ORDER BY id"
        ).fetchall()


@pytest.fixture
def water_meter(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        add_meter(conn, "W1", "water")  # no size class: the '*' limit applies
        add_readings(conn, "W1", "24.2.1", [(utc("2026-11-01T00:00"), 100.0)])
    return database_url


async def test_limits_over_http(
    water_meter: str, gateway: GatewayHandle, auth_headers: AuthHeaders
) -> None:
    url = water_meter
    operator = await auth_headers(url, Role.OPERATOR)
    tech = await auth_headers(url, Role.TECHNICIAN)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as http:
        assert (await http.get("/billing/limits")).status_code == 401
        assert (await http.get("/billing/limits", headers=tech)).status_code == 403
        listed = await http.get("/billing/limits", headers=operator)
        assert listed.status_code == 200
        assert _table(listed.json()) == SEEDED
        put = "/billing/limits/water/%2A"  # '*', percent-encoded as a client library may
        assert (await http.put(put, json={"max_per_day": 9}, headers=tech)).status_code == 403

        # 5 m3/day: 8 m3 in one day is held for review
        read = {"value": 108, "read_at": "2026-11-02T02:00:00+02:00", "source": "meter_reader"}
        held = await http.post("/meters/W1/reads", json=read, headers=tech)
        assert (held.json()["status"], held.json()["reason"]) == (
            "rejected",
            "implausible_consumption",
        )

        changed = await http.put(
            "/billing/limits/water/*", json={"max_per_day": 9}, headers=operator
        )
        assert changed.status_code == 200, changed.text
        assert changed.json() == {
            "utility": "water",
            "size": "*",
            "max_per_day": 9.0,
            "unit": "m3/day",
        }
        created = await http.put(
            "/billing/limits/water/32mm", json={"max_per_day": 40.5}, headers=operator
        )
        assert created.status_code == 200
        after = _table((await http.get("/billing/limits", headers=operator)).json())
        assert after == [
            *SEEDED[:3],
            ("water", "*", 9.0, "m3/day"),
            *SEEDED[4:],
            ("water", "32mm", 40.5, "m3/day"),
        ]
        # the next read is checked against the new limit: 8 m3 a day is plausible now
        read = {**read, "read_at": "2026-11-03T02:00:00+02:00", "value": 116}
        accepted = await http.post("/meters/W1/reads", json=read, headers=tech)
        assert (accepted.json()["status"], accepted.json()["reason"]) == ("accepted", None)

        for path, body in (
            (put, {"max_per_day": 0}),
            (put, {"max_per_day": -1}),
            (put, {"max_per_day": 1e7}),
            (put, {"max_per_day": "lots"}),
            (put, {}),
            (put, {"max_per_day": 5, "extra": 1}),
            ("/billing/limits/gas/*", {"max_per_day": 5}),
            ("/billing/limits/water/_x", {"max_per_day": 5}),
            ("/billing/limits/water/" + "x" * 33, {"max_per_day": 5}),
        ):
            refused = await http.put(path, json=body, headers=operator)
            assert refused.status_code == 422, (path, body, refused.text)
            assert refused.json()["error"]["code"] == "invalid_request"
        bad_json = await http.put(
            put,
            content=b'{"max_per_day": NaN}',
            headers={**operator, "content-type": "application/json"},
        )
        assert bad_json.status_code == 422

    records = _audit(url)
    changes = [r for r in records if r[1] == "billing.limit.set"]
    assert [r[2:] for r in changes] == [
        ("billing_limit:water/*", "changed", {"max_per_day": 9.0, "previous": 5.0}),
        ("billing_limit:water/32mm", "created", {"max_per_day": 40.5, "previous": None}),
    ]
    actors = {r[0] for r in changes}
    assert len(actors) == 1 and actors.pop().startswith("test-operator-")
    # refused attempts are in the log too (by the API's generic record), and nothing else
    refusals = [r[3] for r in records if r[1] != "billing.limit.set"]
    assert refusals == ["forbidden"] + ["failed:422"] * 10


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(url, "billing", "limits", *args)


def test_limits_on_the_command_line(database_url: str) -> None:
    listed = _cli(database_url, "list")
    assert listed.returncode == 0, listed.stderr
    assert _table([json.loads(line) for line in listed.stdout.splitlines()]) == SEEDED

    done = _cli(database_url, "set", "electricity", "60A", "300")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "utility": "electricity",
        "size": "60A",
        "max_per_day": 300.0,
        "unit": "kWh/day",
        "previous": 250.0,
    }
    relisted = [json.loads(line) for line in _cli(database_url, "list").stdout.splitlines()]
    assert ("electricity", "60A", 300.0, "kWh/day") in _table(relisted)
    assert _audit(database_url) == [
        (
            f"cli:{getpass.getuser()}",
            "billing.limit.set",
            "billing_limit:electricity/60A",
            "changed",
            {"max_per_day": 300.0, "previous": 250.0},
        )
    ]

    for bad in (
        ("set", "electricity", "60A", "0"),
        ("set", "electricity", "60A", "nan"),
        ("set", "electricity", "60A", "many"),
        ("set", "gas", "*", "5"),
        ("set", "water", "a b", "5"),
    ):
        refused = _cli(database_url, *bad)
        assert refused.returncode == 2, (bad, refused.stdout)
    assert len(_audit(database_url)) == 1  # nothing else changed
