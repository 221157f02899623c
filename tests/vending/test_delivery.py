"""The keypad delivery outbox against the real database, with a recording publisher."""

from __future__ import annotations

import json

import pytest

from gateway.vending.delivery import deliver_pending
from protocols.topics import Topics
from tests.vending.conftest import Vend


class Recorder:
    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[tuple[str, dict[str, str]]] = []
        self.fail_after = fail_after

    async def __call__(self, topic: str, payload: bytes) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionError("broker went away")
        self.sent.append((topic, json.loads(payload)))


async def test_online_meters_get_their_tokens_in_order(vend: Vend) -> None:
    vendor = await vend.vendor("1000.00")
    await vend.account("fbe", indigent_from="2020-01-01")
    online = await vend.meter(account="fbe")
    offline = await vend.meter()
    reversed_meter = await vend.meter()
    await vend.execute("UPDATE meters SET online = (meter_id <> %s)", offline)
    sale = (await vend.credit(vendor, online, "23.00")).json()
    await vend.credit(vendor, offline, "23.00")
    gone = (await vend.credit(vendor, reversed_meter, "23.00")).json()
    await vend.client.post(
        "/vend/v1/reverse",
        json={"request_id": "r", "receipt_no": gone["receipt_no"]},
        headers=vendor,
    )
    recorder = Recorder()
    topics = Topics("site-a/")
    assert await deliver_pending(vend.pool, recorder, topics) == 2
    assert recorder.sent == [
        (
            f"site-a/meters/{online}/keypad",
            {"id": f"{sale['receipt_no']}-1", "token": sale["tokens"][0]["token"]},
        ),
        (
            f"site-a/meters/{online}/keypad",
            {"id": f"{sale['receipt_no']}-2", "token": sale["tokens"][1]["token"]},
        ),
    ]
    assert (
        await vend.scalar("SELECT state FROM sales WHERE receipt_no = %s", sale["receipt_no"])
        == "delivered"
    )
    reprint = await vend.client.post(
        "/vend/v1/reprint",
        json={"request_id": "p", "receipt_no": sale["receipt_no"]},
        headers=vendor,
    )
    assert reprint.json()["receipts"][0]["state"] == "delivered"
    assert await deliver_pending(vend.pool, recorder, topics) == 0


async def test_a_publish_failure_keeps_what_went_out(vend: Vend) -> None:
    vendor = await vend.vendor("1000.00")
    meters = [await vend.meter() for _ in range(3)]
    await vend.execute("UPDATE meters SET online = true")
    for meter in meters:
        await vend.credit(vendor, meter, "23.00")
    recorder = Recorder(fail_after=2)
    with pytest.raises(ConnectionError):
        await deliver_pending(vend.pool, recorder, Topics())
    assert await vend.scalar("SELECT count(*) FROM vend_tokens WHERE state = 'delivered'") == 2
    recorder.fail_after = None
    assert await deliver_pending(vend.pool, recorder, Topics()) == 1
    assert len(recorder.sent) == 3
