"""Credit vends against the real database: the receipt contract, tokens a meter accepts,
floats, idempotency and the refusals."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from decimal import Decimal

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.vending.errors import InProgressError, VendingUnavailableError
from gateway.vending.service import VendingConfig, VendingService
from tests.vending.conftest import Vend, build_app, decoder_key
from tokens.decoder import Accepted, MeterDecoder
from tokens.records import Medium

RECEIPT_KEYS = {
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


async def test_credit_receipt_contract_and_token_accepted_by_meter(vend: Vend) -> None:
    vendor = await vend.vendor("1000.00")
    meter = await vend.meter()
    response = await vend.credit(vendor, meter, "100.00", request_id="till-1")
    assert response.status_code == 200, response.text
    receipt = response.json()
    assert set(receipt) == RECEIPT_KEYS
    assert receipt["request_id"] == "till-1"
    assert receipt["meter"] == meter
    assert receipt["utility"] == "electricity"
    assert receipt["state"] == "issued"
    assert receipt["reprint"] is False
    assert receipt["amount"] == "100.00"
    # 100.00 at 2.00 + 15 % VAT = 0.23 a tenth: 434 tenths
    assert receipt["units"] == "43.4"
    assert receipt["charges"] == {"vat": "13.04", "fixed": "0.00", "debt_recovered": "0.00"}
    assert receipt["blocks"] == [{"from": "0", "to": "100", "rate": "2", "units": "43.4"}]
    assert receipt["float_balance"] == "900.00"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", receipt["issued_at"])
    [token] = receipt["tokens"]
    assert token["kind"] == "credit"
    assert re.fullmatch(r"\d{20}", token["token"])
    assert token["units"] == "43.4"
    assert isinstance(token["tid"], int)

    meter_model = MeterDecoder(decoder_key(meter), krn=1, ti=1, sgc="123456")
    verdict = meter_model.accept(token["token"])
    assert isinstance(verdict, Accepted)
    assert meter_model.credit(Medium.ELECTRICITY) == 434
    assert verdict.token.tid == token["tid"]  # type: ignore[union-attr]

    balance = await vend.client.get("/vend/v1/float", headers=vendor)
    assert balance.json()["float_balance"] == "900.00"


async def test_retry_returns_the_identical_bytes_and_charges_once(vend: Vend) -> None:
    vendor = await vend.vendor("500.00")
    meter = await vend.meter()
    first = await vend.credit(vendor, meter, "50.00", request_id="same-1")
    again = await vend.credit(vendor, meter, "50", request_id="same-1")
    assert first.status_code == again.status_code == 200
    assert first.content == again.content
    assert await vend.scalar("SELECT count(*) FROM sales WHERE meter_id = %s", meter) == 1
    other = await vend.credit(vendor, meter, "60.00", request_id="same-1")
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "request_id_reused"
    balance = await vend.client.get("/vend/v1/float", headers=vendor)
    assert balance.json()["float_balance"] == "450.00"


async def test_hundred_concurrent_retries_make_one_sale(vend: Vend) -> None:
    vendor = await vend.vendor("500.00")
    meter = await vend.meter()
    responses = await asyncio.gather(
        *(vend.credit(vendor, meter, "20.00", request_id="burst-1") for _ in range(100))
    )
    ok = [r for r in responses if r.status_code == 200]
    assert all(r.status_code in (200, 409) for r in responses)
    assert all(
        r.json()["error"]["code"] == "in_progress" for r in responses if r.status_code != 200
    )
    assert ok
    assert len({r.content for r in ok}) == 1
    assert await vend.scalar("SELECT count(*) FROM sales WHERE meter_id = %s", meter) == 1
    assert await vend.scalar("SELECT count(*) FROM vend_tokens WHERE meter_id = %s", meter) == 1
    name = await vend.vendor_name(vendor)
    assert (
        await vend.scalar(
            "SELECT count(*) FROM float_movements WHERE vendor = %s AND kind = 'sale'", name
        )
        == 1
    )


async def test_float_never_goes_negative_under_concurrency(vend: Vend) -> None:
    vendor = await vend.vendor("100.00")
    meters = [await vend.meter() for _ in range(3)]
    responses = await asyncio.gather(
        *(vend.credit(vendor, meters[i % 3], "10.00") for i in range(25))
    )
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10
    refused = [r.json()["error"]["code"] for r in responses if r.status_code != 200]
    assert refused == ["insufficient_float"] * 15
    name = await vend.vendor_name(vendor)
    assert await vend.scalar(
        "SELECT min(balance_after) FROM float_movements WHERE vendor = %s", name
    ) == Decimal("0.00")
    # the balance is the sum of the movements
    assert await vend.scalar(
        "SELECT sum(amount) FROM float_movements WHERE vendor = %s", name
    ) == Decimal("0.00")


async def test_tids_strictly_increase_within_one_minute(vend: Vend) -> None:
    vendor = await vend.vendor()
    meter = await vend.meter()
    vend.clock.now = vend.clock()
    tids = []
    for _ in range(3):
        response = await vend.credit(vendor, meter, "10.00")
        tids.append(response.json()["tokens"][-1]["tid"])
    assert tids == sorted(set(tids))
    assert tids[1] == tids[0] + 1
    model = MeterDecoder(decoder_key(meter), krn=1, ti=1, sgc="123456")
    # the meter accepts all three in issue order
    rows = await vend.scalar(
        "SELECT array_agg(token ORDER BY token_id) FROM vend_tokens WHERE meter_id = %s", meter
    )
    assert all(isinstance(model.accept(token), Accepted) for token in rows)


async def test_block_boundary_across_the_months_purchases(vend: Vend) -> None:
    vendor = await vend.vendor("2000.00")
    meter = await vend.meter()
    first = (await vend.credit(vendor, meter, "218.50")).json()  # 950 tenths at 0.23
    assert first["units"] == "95.0"
    second = (await vend.credit(vendor, meter, "50.00")).json()
    assert second["blocks"] == [
        {"from": "0", "to": "100", "rate": "2", "units": "5.0"},
        {"from": "100", "to": "400", "rate": "2.5", "units": "13.3"},
    ]
    assert second["units"] == "18.3"


async def test_refusals_have_codes(vend: Vend) -> None:
    vendor = await vend.vendor("100.00")
    meter = await vend.meter()
    postpaid = await vend.meter(payment="postpaid")

    async def code(meter_id: str, amount: str) -> tuple[int, str]:
        response = await vend.credit(vendor, meter_id, amount)
        return response.status_code, response.json()["error"]["code"]

    assert await code("01234567897", "50.00") == (404, "unknown_meter")
    assert await code(postpaid, "50.00") == (409, "not_prepaid")
    assert await code(meter, "1.00") == (422, "amount_too_small")
    assert await code(meter, "0") == (422, "amount_too_small")
    assert await code(meter, "10000.01") == (422, "amount_too_large")
    assert await code(meter, "500.00") == (402, "insufficient_float")
    water = await vend.meter(utility="water")
    await vend.execute("DELETE FROM tariffs WHERE utility = 'water'")
    assert await code(water, "50.00") == (409, "no_tariff")
    blocked = await vend.client.put(
        f"/meters/{meter}/vending-block",
        json={"reason": "arrears: visit the municipal office"},
        headers=vend.operator,
    )
    assert blocked.status_code == 200
    status, error = await code(meter, "50.00")
    assert (status, error) == (403, "meter_blocked")
    response = await vend.credit(vendor, meter, "50.00")
    assert "visit the municipal office" in response.json()["error"]["message"]
    # nothing was charged by any refusal
    balance = await vend.client.get("/vend/v1/float", headers=vendor)
    assert balance.json()["float_balance"] == "100.00"


async def test_vending_needs_a_vendor_key(vend: Vend) -> None:
    meter = await vend.meter()
    response = await vend.client.post(
        "/vend/v1/credit", json={"request_id": "x", "meter": meter, "amount": "10.00"}
    )
    assert response.status_code == 401
    response = await vend.client.post(
        "/vend/v1/credit",
        json={"request_id": "x", "meter": meter, "amount": "10.00"},
        headers=vend.operator,
    )
    assert response.status_code == 403


async def test_quote_charges_nothing(vend: Vend) -> None:
    vendor = await vend.vendor("100.00")
    meter = await vend.meter()
    response = await vend.client.post(
        "/vend/v1/quote", json={"meter": meter, "amount": "23.00"}, headers=vendor
    )
    assert response.status_code == 200, response.text
    quote = response.json()
    assert quote["units"] == "10.0"
    assert quote["key_change_due"] is False
    assert quote["free_basic_due"] is False
    assert quote["float_balance"] == "100.00"
    assert await vend.scalar("SELECT count(*) FROM sales WHERE meter_id = %s", meter) == 0


async def test_debt_recovery_reduces_arrears(vend: Vend) -> None:
    vendor = await vend.vendor("1000.00")
    await vend.account("acc-debt", arrears="30.00", debt_recovery_share="20")
    meter = await vend.meter(account="acc-debt")
    receipt = (await vend.credit(vendor, meter, "100.00")).json()
    assert receipt["charges"]["debt_recovered"] == "20.00"
    assert receipt["units"] == "34.7"
    receipt = (await vend.credit(vendor, meter, "100.00")).json()
    assert receipt["charges"]["debt_recovered"] == "10.00"
    account = await vend.client.get("/accounts/acc-debt", headers=vend.operator)
    assert account.json()["arrears"] == "0.00"


async def test_retry_of_a_request_still_in_flight_gets_in_progress(vend: Vend) -> None:
    vendor = await vend.vendor("100.00")
    name = await vend.vendor_name(vendor)
    meter = await vend.meter()
    service = VendingService(
        vend.pool, vend.service._keys, VendingConfig(retry_wait=timedelta(milliseconds=300))
    )
    async with await psycopg.AsyncConnection.connect(vend.database_url) as holder:
        # another process's transaction has claimed the request and not finished yet
        await holder.execute(
            "INSERT INTO vend_requests (vendor, request_id, operation, body_hash, status,"
            " response) VALUES (%s, 'held-1', 'credit', '\\x00', 0, '')",
            (name,),
        )
        with pytest.raises(InProgressError):
            await service.credit(name, "held-1", meter, Decimal("20.00"))
        await holder.rollback()
    # the first attempt died without committing: the retry does the sale itself
    body = await service.credit(name, "held-1", meter, Decimal("20.00"))
    assert b'"amount":"20.00"' in body


async def test_meter_on_a_base_date_still_in_the_future_is_refused(vend: Vend) -> None:
    vendor = await vend.vendor("100.00")
    meter = await vend.meter(base_date=2035, dkga="04")
    response = await vend.credit(vendor, meter, "23.00")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "meter_not_configured"
    assert "2035" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "lock",
    [
        "SELECT 1 FROM meter_vending WHERE meter_id = %(meter)s FOR UPDATE",
        "SELECT 1 FROM vendors WHERE vendor = %(vendor)s FOR UPDATE",
    ],
)
async def test_a_new_request_waits_for_a_busy_meter_or_float_past_retry_wait(
    vend: Vend, lock: str
) -> None:
    vendor = await vend.vendor("100.00")
    name = await vend.vendor_name(vendor)
    meter = await vend.meter()
    service = VendingService(
        vend.pool, vend.service._keys, VendingConfig(retry_wait=timedelta(milliseconds=200))
    )
    async with await psycopg.AsyncConnection.connect(vend.database_url) as holder:
        # another sale of the same meter (or vendor) holds its row for a while
        await holder.execute(lock, {"meter": meter, "vendor": name})
        sale = asyncio.create_task(service.credit(name, "busy-1", meter, Decimal("20.00")))
        await asyncio.sleep(1.0)
        assert not sale.done()
        await holder.rollback()
    body = await asyncio.wait_for(sale, timeout=10)
    assert b'"amount":"20.00"' in body


async def test_a_row_held_past_lock_wait_is_unavailable_not_in_progress(vend: Vend) -> None:
    vendor = await vend.vendor("100.00")
    name = await vend.vendor_name(vendor)
    meter = await vend.meter()
    config = VendingConfig(
        retry_wait=timedelta(milliseconds=200), lock_wait=timedelta(milliseconds=500)
    )
    service = VendingService(vend.pool, vend.service._keys, config)
    async with await psycopg.AsyncConnection.connect(vend.database_url) as holder:
        await holder.execute("SELECT 1 FROM meter_vending WHERE meter_id = %s FOR UPDATE", (meter,))
        with pytest.raises(VendingUnavailableError):
            await service.credit(name, "stuck-1", meter, Decimal("20.00"))
        await holder.rollback()
    # nothing was kept: the retry does the sale
    body = await service.credit(name, "stuck-1", meter, Decimal("20.00"))
    assert b'"amount":"20.00"' in body


async def test_retries_in_one_process_wait_without_holding_connections(vend: Vend) -> None:
    vendor = await vend.vendor("100.00")
    name = await vend.vendor_name(vendor)
    meter = await vend.meter()
    async with AsyncConnectionPool(vend.database_url, min_size=2, max_size=2) as pool:
        service = VendingService(pool, vend.service._keys, VendingConfig())
        async with await psycopg.AsyncConnection.connect(vend.database_url) as holder:
            # the first attempt is held up on the meter's row; its retries queue behind it
            await holder.execute(
                "SELECT 1 FROM meter_vending WHERE meter_id = %s FOR UPDATE", (meter,)
            )
            first = asyncio.create_task(service.credit(name, "queue-1", meter, Decimal("20.00")))
            await asyncio.sleep(0.3)
            retries = [
                asyncio.create_task(service.credit(name, "queue-1", meter, Decimal("20.00")))
                for _ in range(20)
            ]
            await asyncio.sleep(0.5)
            # one connection is the first attempt's; the other is still free for anyone else
            assert pool.get_stats()["pool_available"] == 1
            async with pool.connection(timeout=0.5) as conn:
                await conn.execute("SELECT 1")
            await holder.rollback()
        bodies = await asyncio.gather(first, *retries)
    assert len(set(bodies)) == 1
    assert await vend.scalar("SELECT count(*) FROM sales WHERE request_id = 'queue-1'") == 1


async def test_a_busy_pool_answers_vending_unavailable_with_retry_after(vend: Vend) -> None:
    vendor = await vend.vendor("100.00")
    meter = await vend.meter()
    body = {"request_id": "busy-pool-1", "meter": meter, "amount": "20.00"}
    async with AsyncConnectionPool(vend.database_url, min_size=1, max_size=1) as pool:
        config = VendingConfig(db_wait=timedelta(milliseconds=200))
        service = VendingService(pool, vend.service._keys, config)
        app = build_app(service, access_pool=vend.pool)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vend.test") as client:
            async with pool.connection():  # the vending pool's only connection is taken
                response = await client.post("/vend/v1/credit", json=body, headers=vendor)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "vending_unavailable"
            assert response.headers["Retry-After"] == "1"
            # nothing was kept: the same request goes through once a connection is free
            again = await client.post("/vend/v1/credit", json=body, headers=vendor)
            assert again.status_code == 200, again.text
