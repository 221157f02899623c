"""End to end: a vend's tokens delivered by the running gateway to a simulated meter's keypad
over MQTT, the meter's ``token_accepted`` stored by the gateway, the sale marked accepted and
the credit in the meter's status."""

from __future__ import annotations

import asyncio
import uuid

from firmware_sim.clock import ManualClock
from firmware_sim.fleet import FleetSpec, GroundTruth, build_fleet, run_fleet
from firmware_sim.identity import Transport, Utility, make_identity
from firmware_sim.mqtt_link import parse_broker_url
from gateway.service import GatewayHandle
from protocols.topics import Topics
from tests.firmware_sim.helpers import START
from tests.plugins.gateway import wait_for_value
from tests.vending.conftest import Vend


async def test_sale_accepted_by_a_simulated_meter(
    vend: Vend, gateway: GatewayHandle, mqtt_url: str, topic_prefix: str
) -> None:
    del gateway  # running: it delivers the tokens and stores the meter's events and status
    seed = 10 + uuid.uuid4().int % 80
    identity = make_identity(
        seed, 0, transport=Transport.MQTT, utility=Utility.ELECTRICITY, prepaid=True
    )
    meter = await vend.meter(drn=identity.meter_id)
    vendor = await vend.vendor("500.00")
    devices = build_fleet(FleetSpec(seed=seed, meters=1), START, identities=[identity])
    topics = Topics(topic_prefix)
    stop = asyncio.Event()
    fleet = asyncio.create_task(
        run_fleet(
            devices,
            clock=ManualClock(START),
            stop=stop,
            truth=GroundTruth(None),
            broker=parse_broker_url(mqtt_url),
            topics=topics,
            per_connection=1,
            session_expiry=60,
            link_prefix=f"v{seed}",
        )
    )
    try:

        async def credit_in_status() -> float | None:
            value = await vend.scalar(
                "SELECT (status ->> 'credit')::float8 FROM meters WHERE meter_id = %s", meter
            )
            return None if value is None else float(value)

        before = None
        async with asyncio.timeout(30):
            while before is None:
                before = await credit_in_status()
                await asyncio.sleep(0.1)
        receipt = (await vend.credit(vendor, meter, "46.00")).json()  # 200 tenths at 0.23
        assert receipt["units"] == "20.0"

        async def sale_state() -> str:
            result: str = await vend.scalar(
                "SELECT state FROM sales WHERE receipt_no = %s", receipt["receipt_no"]
            )
            return result

        assert await wait_for_value(sale_state, "accepted", timeout=30) == "accepted"
        expected = round(before + 20.0, 3)
        assert await wait_for_value(credit_in_status, expected, timeout=30) == expected
        listed = (await vend.client.get("/vend/v1/transactions", headers=vendor)).json()
        assert listed["transactions"][0]["state"] == "accepted"
    finally:
        stop.set()
        await asyncio.wait_for(fleet, 20)
