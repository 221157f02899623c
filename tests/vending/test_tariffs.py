"""Tariff validation: what the database could not store is refused up front, clearly."""

from __future__ import annotations

import copy
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from gateway.vending import tariffs
from gateway.vending.errors import InvalidInputError
from gateway.vending.pricing import Block, Tariff
from tests.vending.conftest import TARIFF, Vend


def tariff(**fields: Any) -> dict[str, Any]:
    item = copy.deepcopy(TARIFF)
    item["customer_class"] = "validation"
    item.update(fields)
    return item


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"vat_rate": "0.99999"}, "vat_rate 0.99999 has more than 4 decimal places"),
        ({"vat_rate": "0.12345"}, "vat_rate 0.12345 has more than 4 decimal places"),
        ({"vat_rate": "1"}, "vat_rate 1 must be a fraction in [0, 1)"),
        ({"vat_rate": "-0.1"}, "must be a fraction"),
        ({"fixed_monthly": "99999999999"}, "fixed_monthly 99999999999 must be between 0 and"),
        ({"fixed_monthly": "1e30"}, "must be between 0 and"),
        ({"fixed_monthly": "10.005"}, "fixed_monthly 10.005 has more than 2 decimal places"),
        ({"fixed_monthly": "-1"}, "must be between 0 and"),
        ({"customer_class": "Domestic Prepaid"}, "customer_class 'Domestic Prepaid' must be"),
    ],
)
async def test_unstorable_tariff_values_are_refused_with_422(
    vend: Vend, fields: dict[str, Any], message: str
) -> None:
    response = await vend.client.post(
        "/tariffs", json={"tariffs": [tariff(**fields)]}, headers=vend.operator
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert message in response.json()["error"]["message"]
    stored = await vend.scalar("SELECT count(*) FROM tariffs WHERE customer_class = 'validation'")
    assert stored == 0


async def test_largest_storable_values_are_accepted(vend: Vend) -> None:
    item = tariff(vat_rate="0.9999", fixed_monthly="9999999999.99")
    response = await vend.client.post("/tariffs", json={"tariffs": [item]}, headers=vend.operator)
    assert response.status_code == 200, response.text
    listed = await vend.client.get("/tariffs", headers=vend.operator)
    [stored] = [t for t in listed.json() if t["customer_class"] == "validation"]
    assert stored["vat_rate"] == "0.9999"
    assert stored["fixed_monthly"] == "9999999999.99"


def test_yaml_zero_vat_is_zero_not_the_default() -> None:
    text = """\
tariffs:
  - utility: water
    effective_from: 2025-07-01
    vat_rate: 0
    fixed_monthly: 0
    blocks:
      - {from: 0, to: null, rate: "20.00"}
  - utility: electricity
    effective_from: 2025-07-01
    blocks:
      - {from: 0, to: null, rate: "2.00"}
"""
    (zero, _), (default, _) = tariffs.parse_tariff_file("t.yaml", text)
    assert zero.vat_rate == 0
    assert zero.fixed_monthly == 0
    assert default.vat_rate == tariffs.DEFAULT_VAT
    assert default.fixed_monthly == 0


async def test_database_refusals_while_storing_are_invalid_input(database_url: str) -> None:
    # Built directly, past the file checks: the database's own limits still answer clearly.
    unstorable = Tariff(
        tariff_id=0,
        utility="electricity",
        customer_class="domestic",
        effective_from=date(2030, 1, 1),
        vat_rate=Decimal("0.99999"),
        fixed_monthly=Decimal("99999999999"),
        blocks=(Block(Decimal(0), None, Decimal("2.00")),),
    )
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        with pytest.raises(InvalidInputError, match="the tariffs cannot be stored"):
            await tariffs.store_tariffs(conn, [(unstorable, "")])
        cur = await conn.execute("SELECT count(*) FROM tariffs")
        assert await cur.fetchone() == (0,)
