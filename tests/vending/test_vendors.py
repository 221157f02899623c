"""Top-ups only reach enabled vendors: a mistyped name opens no float."""

from __future__ import annotations

import pytest

from gateway.auth import store as access
from gateway.http.security import Role
from tests.plugins.auth import make_api_key
from tests.vending.conftest import Vend
from tests.vending.test_cli import gateway


async def top_up(vend: Vend, name: str, amount: str = "50.00") -> tuple[int, dict[str, str]]:
    response = await vend.client.post(
        f"/vendors/{name}/top-ups", json={"amount": amount}, headers=vend.operator
    )
    return response.status_code, response.json()


async def test_top_up_of_an_unknown_name_is_404_and_opens_no_float(vend: Vend) -> None:
    status, body = await top_up(vend, "no-such-vendor")
    assert status == 404, body
    assert body["error"]["code"] == "unknown_vendor"
    assert "no-such-vendor" in body["error"]["message"]
    assert await vend.scalar("SELECT count(*) FROM vendors WHERE vendor = 'no-such-vendor'") == 0


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.TECHNICIAN])
async def test_top_up_of_a_principal_without_the_vendor_role_is_404(vend: Vend, role: Role) -> None:
    name = f"not-a-vendor-{role.value}"
    await make_api_key(vend.database_url, role, name)
    status, body = await top_up(vend, name)
    assert status == 404, body
    assert body["error"]["code"] == "unknown_vendor"


async def test_top_up_of_a_disabled_vendor_is_404(vend: Vend) -> None:
    vendor = await vend.vendor("100.00")
    name = await vend.vendor_name(vendor)
    async with vend.pool.connection() as conn:
        await access.disable_principal(conn, name)
    status, body = await top_up(vend, name)
    assert status == 404, body
    assert body["error"]["code"] == "unknown_vendor"
    balance = await vend.scalar(
        "SELECT balance_after FROM float_movements WHERE vendor = %s"
        " ORDER BY movement_id DESC LIMIT 1",
        name,
    )
    assert str(balance) == "100.00"


async def test_cli_top_up_of_an_unknown_name_fails_clearly(vend: Vend) -> None:
    result = gateway(vend.database_url, "vendors", "top-up", "no-such-vendor", "50.00")
    assert result.returncode == 1
    assert "no enabled vendor named 'no-such-vendor'" in result.stderr
    assert await vend.scalar("SELECT count(*) FROM vendors WHERE vendor = 'no-such-vendor'") == 0
