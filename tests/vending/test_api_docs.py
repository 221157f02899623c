"""The vending API's OpenAPI description, and meters' STS data through the registry."""

from __future__ import annotations

from tests.vending.conftest import Vend

VENDING_PATHS = {
    ("/vend/v1/quote", "post"),
    ("/vend/v1/credit", "post"),
    ("/vend/v1/free-issue", "post"),
    ("/vend/v1/reprint", "post"),
    ("/vend/v1/reverse", "post"),
    ("/vend/v1/confirm", "post"),
    ("/vend/v1/transactions", "get"),
    ("/vend/v1/float", "get"),
    ("/accounts/{account_id}", "put"),
    ("/tariffs", "post"),
    ("/vendors/{vendor}/top-ups", "post"),
}


async def test_every_vending_endpoint_is_documented(vend: Vend) -> None:
    spec = (await vend.client.get("/openapi.json")).json()
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert documented >= VENDING_PATHS
    credit = spec["paths"]["/vend/v1/credit"]["post"]
    assert credit["summary"] and credit["description"]
    assert "409" in credit["responses"] and "402" in credit["responses"]
    schemas = spec["components"]["schemas"]
    assert schemas["CreditIn"]["examples"][0]["amount"] == "50.00"
    receipt = schemas["ReceiptOut"]
    assert set(receipt["properties"]) == {
        "receipt_no",
        "request_id",
        "meter",
        "utility",
        "state",
        "reprint",
        "tokens",
        "amount",
        "units",
        "charges",
        "blocks",
        "float_balance",
        "issued_at",
    }
    assert receipt["examples"][0]["tokens"][0]["kind"] == "free_basic"
    assert "security" in credit


async def test_meter_sts_data_and_account_through_the_registry(vend: Vend) -> None:
    meter = await vend.meter(account="acc-77")
    shown = (await vend.client.get(f"/meters/{meter}", headers=vend.operator)).json()
    assert shown["account"] == "acc-77"
    assert shown["sts"] == {
        "sgc": "123456",
        "krn": 1,
        "ti": 1,
        "key_type": 2,
        "base_date": 2014,
        "ea": "07",
        "dkga": "02",
    }
    # a PUT without sts keeps the key data on record
    response = await vend.client.put(
        f"/meters/{meter}",
        json={"utility": "electricity", "payment": "prepaid"},
        headers=vend.operator,
    )
    assert response.json()["sts"]["krn"] == 1
    bad = await vend.client.put(
        f"/meters/{meter}",
        json={
            "utility": "electricity",
            "payment": "prepaid",
            "sts": {
                "sgc": "12345",
                "krn": 0,
                "ti": 1,
                "key_type": 2,
                "base_date": 2000,
                "ea": "11",
                "dkga": "02",
            },
        },
        headers=vend.operator,
    )
    assert bad.status_code == 422
    account = (await vend.client.get("/accounts/acc-77", headers=vend.operator)).json()
    assert account["arrears"] == "0.00"
    missing = await vend.client.get("/accounts/nope", headers=vend.operator)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_account"
