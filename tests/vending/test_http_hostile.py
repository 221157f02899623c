"""Vending bodies with text PostgreSQL cannot store (NUL, lone surrogates): a 422 naming the
field, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.vending.conftest import Vend

_TARIFF: dict[str, Any] = {
    "utility": "electricity",
    "customer_class": "domestic",
    "effective_from": "2026-07-01",
    "name": "{}",
    "blocks": [{"from": "0", "to": None, "rate": "2.10"}],
}


@pytest.mark.parametrize("text", ["a\x00b", "a\ud800b"], ids=["nul", "surrogate"])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/tariffs", {"tariffs": [_TARIFF]}),
        ("POST", "/vendors/v1/top-ups", {"amount": "10.00", "note": "{}"}),
        ("PUT", "/meters/m1/vending-block", {"reason": "{}"}),
        ("PUT", "/accounts/acc-1", {"customer_class": "{}"}),
    ],
    ids=["tariff-name", "top-up-note", "block-reason", "account"],
)
async def test_unstorable_text_in_an_operator_body_is_a_422(
    vend: Vend, method: str, path: str, body: dict[str, Any], text: str
) -> None:
    content = json.dumps(body).replace('"{}"', json.dumps(text)).encode()
    response = await vend.client.request(
        method, path, content=content, headers={**vend.operator, "content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("text", ["1\x00", "1\ud800"], ids=["nul", "surrogate"])
async def test_unstorable_text_in_a_vendor_body_is_a_422(vend: Vend, text: str) -> None:
    vendor = await vend.vendor()
    content = json.dumps({"request_id": text, "meter": "01234567890", "amount": "5.00"}).encode()
    response = await vend.client.post(
        "/vend/v1/credit", content=content, headers={**vendor, "content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
