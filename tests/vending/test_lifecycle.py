"""After the sale: token results from meters, reversals, confirmations, reprints, free basic
units, key changes and the vendor's own transaction list."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from tests.vending.conftest import SGC, Vend, decoder_key
from tokens.decoder import Accepted, MeterDecoder
from tokens.records import Medium

_event_ts = [datetime(2026, 1, 1, tzinfo=UTC)]


async def report(vend: Vend, meter: str, token_ref: str, *, accepted: bool = True) -> None:
    """What the ingest stores when a meter reports a token result (docs/protocol.md §5)."""
    _event_ts[0] += timedelta(seconds=1)
    details: dict[str, Any] = {"token_id": token_ref}
    if not accepted:
        details["reason"] = "tid_reused"
    await vend.execute(
        "INSERT INTO meter_events (meter_id, ts, type, details, event_key)"
        " VALUES (%s, %s, %s, %s, sha256(convert_to(%s || %s, 'UTF8')))",
        meter,
        _event_ts[0],
        "token_accepted" if accepted else "token_rejected",
        Jsonb(details),
        meter,
        str(_event_ts[0]),
    )


async def state(vend: Vend, receipt_no: str) -> str:
    result: str = await vend.scalar("SELECT state FROM sales WHERE receipt_no = %s", receipt_no)
    return result


async def advice(
    vend: Vend, headers: dict[str, str], kind: str, receipt_no: str, request_id: str
) -> Any:
    return await vend.client.post(
        f"/vend/v1/{kind}",
        json={"request_id": request_id, "receipt_no": receipt_no},
        headers=headers,
    )


async def test_token_results_move_the_sale_state(vend: Vend) -> None:
    vendor = await vend.vendor()
    meter = await vend.meter()
    accepted = (await vend.credit(vendor, meter, "20.00")).json()
    await report(vend, meter, f"{accepted['receipt_no']}-1")
    assert await state(vend, accepted["receipt_no"]) == "accepted"
    rejected = (await vend.credit(vendor, meter, "20.00")).json()
    # a token typed in by hand and reported with its digits as the id is found too
    await report(vend, meter, rejected["tokens"][0]["token"], accepted=False)
    assert await state(vend, rejected["receipt_no"]) == "rejected"
    reprint = await vend.client.post(
        "/vend/v1/reprint",
        json={"request_id": "rp-1", "receipt_no": accepted["receipt_no"]},
        headers=vendor,
    )
    [again] = reprint.json()["receipts"]
    assert again["reprint"] is True
    assert again["state"] == "accepted"
    assert again["tokens"] == accepted["tokens"]
    assert {k: v for k, v in again.items() if k not in ("reprint", "state")} == {
        k: v for k, v in accepted.items() if k not in ("reprint", "state")
    }


async def test_reversal_before_acceptance_refunds_the_float(vend: Vend) -> None:
    vendor = await vend.vendor("100.00")
    meter = await vend.meter()
    sale = (await vend.credit(vendor, meter, "40.00")).json()
    assert sale["float_balance"] == "60.00"
    response = await advice(vend, vendor, "reverse", sale["receipt_no"], "rev-1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "reversed"
    assert body["float_balance"] == "100.00"
    assert (await advice(vend, vendor, "reverse", sale["receipt_no"], "rev-1")).content == (
        response.content
    )
    again = await advice(vend, vendor, "reverse", sale["receipt_no"], "rev-2")
    assert again.json()["error"]["code"] == "already_reversed"
    # a reversed sale's units no longer count towards the month's blocks
    quote = await vend.client.post(
        "/vend/v1/quote", json={"meter": meter, "amount": "23.00"}, headers=vendor
    )
    assert quote.json()["blocks"][0]["from"] == "0"


async def test_reversal_after_acceptance_is_refused(vend: Vend) -> None:
    vendor = await vend.vendor("100.00")
    meter = await vend.meter()
    sale = (await vend.credit(vendor, meter, "40.00")).json()
    await report(vend, meter, f"{sale['receipt_no']}-1")
    response = await advice(vend, vendor, "reverse", sale["receipt_no"], "rev-a")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "already_accepted"
    balance = await vend.client.get("/vend/v1/float", headers=vendor)
    assert balance.json()["float_balance"] == "60.00"


async def test_reversal_window_and_confirmation(vend: Vend) -> None:
    vendor = await vend.vendor("100.00")
    meter = await vend.meter()
    late = (await vend.credit(vendor, meter, "10.00")).json()
    confirmed = (await vend.credit(vendor, meter, "10.00")).json()
    response = await advice(vend, vendor, "confirm", confirmed["receipt_no"], "conf-1")
    assert response.status_code == 200
    assert response.json()["receipt_no"] == confirmed["receipt_no"]
    response = await advice(vend, vendor, "reverse", confirmed["receipt_no"], "rev-c")
    assert response.json()["error"]["code"] == "reversal_window_closed"
    vend.clock.advance(minutes=10, seconds=1)
    response = await advice(vend, vendor, "reverse", late["receipt_no"], "rev-l")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "reversal_window_closed"


async def test_accepted_after_reversal_opens_a_revenue_protection_claim(vend: Vend) -> None:
    vendor = await vend.vendor("100.00")
    name = await vend.vendor_name(vendor)
    meter = await vend.meter()
    sale = (await vend.credit(vendor, meter, "40.00")).json()
    assert (await advice(vend, vendor, "reverse", sale["receipt_no"], "rev-x")).status_code == 200
    await report(vend, meter, f"{sale['receipt_no']}-1")
    assert await state(vend, sale["receipt_no"]) == "reversed"
    assert await vend.scalar(
        "SELECT amount FROM revenue_protection WHERE vendor = %s", name
    ) == Decimal("40.00")
    assert await vend.scalar(
        "SELECT amount FROM float_movements WHERE vendor = %s AND kind = 'claim'", name
    ) == Decimal("-40.00")
    balance = await vend.client.get("/vend/v1/float", headers=vendor)
    assert balance.json()["float_balance"] == "60.00"


async def test_other_vendors_sales_are_invisible(vend: Vend) -> None:
    alice = await vend.vendor()
    bob = await vend.vendor()
    meter = await vend.meter()
    sale = (await vend.credit(alice, meter, "10.00")).json()
    await vend.credit(bob, meter, "10.00")
    listed = (await vend.client.get("/vend/v1/transactions", headers=alice)).json()
    assert [t["receipt_no"] for t in listed["transactions"]] == [sale["receipt_no"]]
    assert listed["next_after"] is None
    response = await advice(vend, bob, "reverse", sale["receipt_no"], "steal")
    assert response.json()["error"]["code"] == "unknown_receipt"
    response = await vend.client.post(
        "/vend/v1/reprint",
        json={"request_id": "p", "receipt_no": sale["receipt_no"]},
        headers=bob,
    )
    assert response.status_code == 404


async def test_transactions_are_paged(vend: Vend) -> None:
    vendor = await vend.vendor()
    meter = await vend.meter()
    receipts = [(await vend.credit(vendor, meter, "10.00")).json()["receipt_no"] for _ in range(3)]
    page = (await vend.client.get("/vend/v1/transactions?limit=2", headers=vendor)).json()
    assert [t["receipt_no"] for t in page["transactions"]] == receipts[:2]
    rest = (
        await vend.client.get(
            f"/vend/v1/transactions?limit=2&after={page['next_after']}", headers=vendor
        )
    ).json()
    assert [t["receipt_no"] for t in rest["transactions"]] == receipts[2:]
    assert rest["next_after"] is None


async def test_free_basic_units_once_a_month_under_concurrency(vend: Vend) -> None:
    vendor = await vend.vendor("1000.00")
    await vend.account("indigent-1", indigent_from="2020-01-01", indigent_to=None)
    meter = await vend.meter(account="indigent-1")
    quote = await vend.client.post(
        "/vend/v1/quote", json={"meter": meter, "amount": "10.00"}, headers=vendor
    )
    assert quote.json()["free_basic_due"] is True
    assert quote.json()["free_basic_units"] == "100.0"
    responses = await asyncio.gather(
        *(
            vend.client.post(
                "/vend/v1/free-issue",
                json={"request_id": f"fbe-{i}", "meter": meter},
                headers=vendor,
            )
            for i in range(10)
        )
    )
    assert sorted(r.status_code for r in responses) == [200] + [409] * 9
    refused = {r.json()["error"]["code"] for r in responses if r.status_code != 200}
    assert refused == {"no_free_units_due"}
    [issued] = [r.json() for r in responses if r.status_code == 200]
    assert [(t["kind"], t["units"]) for t in issued["tokens"]] == [("free_basic", "100.0")]
    assert issued["amount"] == "0.00"
    model = MeterDecoder(decoder_key(meter), krn=1, ti=1, sgc=SGC)
    assert isinstance(model.accept(issued["tokens"][0]["token"]), Accepted)
    assert model.credit(Medium.ELECTRICITY) == 1000
    sale = (await vend.credit(vendor, meter, "23.00")).json()
    assert [t["kind"] for t in sale["tokens"]] == ["credit"]


async def test_free_units_come_with_the_first_purchase_and_zero_amount(vend: Vend) -> None:
    vendor = await vend.vendor("1000.00")
    await vend.account("indigent-2", indigent_from="2020-01-01")
    meter = await vend.meter(account="indigent-2")
    sale = (await vend.credit(vendor, meter, "23.00")).json()
    assert [(t["kind"], t["units"]) for t in sale["tokens"]] == [
        ("free_basic", "100.0"),
        ("credit", "10.0"),
    ]
    assert sale["tokens"][1]["tid"] > sale["tokens"][0]["tid"]
    water = await vend.meter(utility="water", account="indigent-2")
    only_free = (await vend.credit(vendor, water, "0")).json()
    assert [(t["kind"], t["units"]) for t in only_free["tokens"]] == [("free_basic", "12.0")]
    refused = await vend.credit(vendor, water, "0")
    assert refused.json()["error"]["code"] == "amount_too_small"
    not_indigent = await vend.meter()
    response = await vend.client.post(
        "/vend/v1/free-issue",
        json={"request_id": "fbe-x", "meter": not_indigent},
        headers=vendor,
    )
    assert response.json()["error"]["code"] == "no_free_units_due"


async def test_a_reversed_sale_gives_the_months_free_units_back(vend: Vend) -> None:
    vendor = await vend.vendor("1000.00")
    name = await vend.vendor_name(vendor)
    await vend.account("indigent-3", indigent_from="2020-01-01")
    meter = await vend.meter(account="indigent-3")
    first = (await vend.credit(vendor, meter, "23.00")).json()
    assert [t["kind"] for t in first["tokens"]] == ["free_basic", "credit"]
    reversed_ = await advice(vend, vendor, "reverse", first["receipt_no"], "rev-f1")
    assert reversed_.status_code == 200, reversed_.text
    quote = await vend.client.post(
        "/vend/v1/quote", json={"meter": meter, "amount": "23.00"}, headers=vendor
    )
    assert quote.json()["free_basic_due"] is True
    again = (await vend.credit(vendor, meter, "23.00")).json()
    assert [(t["kind"], t["units"]) for t in again["tokens"]] == [
        ("free_basic", "100.0"),
        ("credit", "10.0"),
    ]
    assert again["tokens"][0]["token"] != first["tokens"][0]["token"]
    assert again["tokens"][0]["tid"] > first["tokens"][1]["tid"]
    # still once a month: the reissue used the month up again
    response = await vend.client.post(
        "/vend/v1/free-issue", json={"request_id": "fbe-r1", "meter": meter}, headers=vendor
    )
    assert response.json()["error"]["code"] == "no_free_units_due"
    # the first, reversed free basic token turns up on the meter after all: the units went
    # out twice, and the whole reversal is claimed back from the vendor
    await report(vend, meter, f"{first['receipt_no']}-1")
    case = await vend.fetchone(
        "SELECT amount, free_tenths FROM revenue_protection WHERE vendor = %s", name
    )
    assert case == (Decimal("23.00"), 1000)
    assert await vend.scalar(
        "SELECT amount FROM float_movements WHERE vendor = %s AND kind = 'claim'", name
    ) == Decimal("-23.00")
    # the month stays with the reissued token: the reversed one shows the units went out twice
    months = await vend.fetchone(
        "SELECT fbe_month, fbe_reversed_month FROM vend_tokens WHERE token = %s",
        first["tokens"][0]["token"],
    )
    assert months is not None and months[0] is None and months[1] is not None
    # its credit token accepted too: still one case and one claim
    await report(vend, meter, f"{first['receipt_no']}-2")
    assert (
        await vend.scalar(
            "SELECT count(*) FROM float_movements WHERE vendor = %s AND kind = 'claim'", name
        )
        == 1
    )


async def test_a_reversed_free_token_the_meter_accepts_uses_the_month_up_again(
    vend: Vend,
) -> None:
    vendor = await vend.vendor("1000.00")
    name = await vend.vendor_name(vendor)
    await vend.account("indigent-5", indigent_from="2020-01-01")
    meter = await vend.meter(account="indigent-5")
    first = (await vend.credit(vendor, meter, "23.00")).json()
    reversal = await advice(vend, vendor, "reverse", first["receipt_no"], "rev-f5")
    assert reversal.status_code == 200, reversal.text
    # the customer types in the reversed free basic token before buying again
    await report(vend, meter, f"{first['receipt_no']}-1")
    quote = await vend.client.post(
        "/vend/v1/quote", json={"meter": meter, "amount": "23.00"}, headers=vendor
    )
    assert quote.json()["free_basic_due"] is False
    again = (await vend.credit(vendor, meter, "23.00")).json()
    assert [t["kind"] for t in again["tokens"]] == ["credit"]
    case = await vend.fetchone(
        "SELECT amount, free_tenths FROM revenue_protection WHERE vendor = %s", name
    )
    assert case == (Decimal("23.00"), 1000)


async def test_a_reversed_free_issue_accepted_later_opens_a_case_without_a_claim(
    vend: Vend,
) -> None:
    vendor = await vend.vendor("100.00")
    name = await vend.vendor_name(vendor)
    await vend.account("indigent-4", indigent_from="2020-01-01")
    meter = await vend.meter(utility="water", account="indigent-4")
    response = await vend.client.post(
        "/vend/v1/free-issue", json={"request_id": "fbe-r2", "meter": meter}, headers=vendor
    )
    issued = response.json()
    reversal = await advice(vend, vendor, "reverse", issued["receipt_no"], "rev-f2")
    assert reversal.status_code == 200, reversal.text
    again = await vend.client.post(
        "/vend/v1/free-issue", json={"request_id": "fbe-r3", "meter": meter}, headers=vendor
    )
    assert [(t["kind"], t["units"]) for t in again.json()["tokens"]] == [("free_basic", "12.0")]
    await report(vend, meter, issued["tokens"][0]["token"])
    case = await vend.fetchone(
        "SELECT amount, free_tenths, movement_id FROM revenue_protection WHERE vendor = %s", name
    )
    assert case == (Decimal("0.00"), 120, None)
    assert (
        await vend.scalar(
            "SELECT count(*) FROM float_movements WHERE vendor = %s AND kind = 'claim'", name
        )
        == 0
    )


async def test_key_change_from_the_1993_base_date(vend: Vend) -> None:
    vendor = await vend.vendor("1000.00")
    meter = await vend.meter(base_date=1993, krn=1)
    response = await vend.client.put(
        f"/supply-groups/{SGC}", json={"krn": 2, "base_date": 2014}, headers=vend.operator
    )
    assert response.status_code == 200
    quote = await vend.client.post(
        "/vend/v1/quote", json={"meter": meter, "amount": "23.00"}, headers=vendor
    )
    assert quote.json()["key_change_due"] is True
    # the meter still holds its 1993, revision 1 key
    model = MeterDecoder(decoder_key(meter, krn=1, base=1993), krn=1, ti=1, sgc=SGC)
    first = (await vend.credit(vendor, meter, "23.00")).json()
    assert [t["kind"] for t in first["tokens"]] == ["key_change", "key_change", "credit"]
    # until the meter reports the key change, every sale repeats it
    second = (await vend.credit(vendor, meter, "23.00")).json()
    assert [t["kind"] for t in second["tokens"]] == ["key_change", "key_change", "credit"]
    verdicts = [model.accept(t["token"]) for t in first["tokens"]]
    assert all(isinstance(v, Accepted) for v in verdicts)
    assert model.krn == 2
    assert model.key == decoder_key(meter, krn=2, vk="0123456789abcdef")
    assert model.credit(Medium.ELECTRICITY) == 100
    for seq in (1, 2, 3):
        await report(vend, meter, f"{first['receipt_no']}-{seq}")
    assert await state(vend, first["receipt_no"]) == "accepted"
    stored = await vend.scalar(
        "SELECT krn || '/' || base_date FROM meter_vending WHERE meter_id = %s", meter
    )
    assert stored == "2/2014"
    third = (await vend.credit(vendor, meter, "23.00")).json()
    assert [t["kind"] for t in third["tokens"]] == ["credit"]
    assert isinstance(model.accept(third["tokens"][0]["token"]), Accepted)
    assert model.credit(Medium.ELECTRICITY) == 200


async def test_key_change_without_a_new_revision_is_refused_clearly(vend: Vend) -> None:
    # DKGA02 keys do not depend on the base date: a 1993 meter needs a new key revision
    vendor = await vend.vendor("1000.00")
    meter = await vend.meter(base_date=1993, krn=1)
    response = await vend.credit(vendor, meter, "23.00")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "key_change_unavailable"
    dkga04 = await vend.meter(base_date=1993, krn=1, dkga="04")
    sale = (await vend.credit(vendor, dkga04, "23.00")).json()
    assert [t["kind"] for t in sale["tokens"]] == ["key_change", "key_change", "credit"]
    model = MeterDecoder(
        decoder_key(dkga04, base=1993, dkga="04", vk="00112233445566778899aabbccddeeff00112233"),
        krn=1,
        ti=1,
        sgc=SGC,
    )
    assert all(isinstance(model.accept(t["token"]), Accepted) for t in sale["tokens"])
    assert model.credit(Medium.ELECTRICITY) == 100


async def test_missing_vending_key_is_a_clear_refusal(vend: Vend) -> None:
    vendor = await vend.vendor("1000.00")
    meter = await vend.meter(krn=3)
    response = await vend.credit(vendor, meter, "23.00")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "key_unavailable"
    assert "abab" not in error["message"]
