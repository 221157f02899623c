"""Modbus TCP devices read back with a real pymodbus client."""

from __future__ import annotations

import asyncio
import socket
import struct
from datetime import timedelta

import pytest
from pymodbus.client import AsyncModbusTcpClient

from firmware_sim.clock import ManualClock
from firmware_sim.fleet import GroundTruth
from firmware_sim.identity import Transport, Utility, WordOrder
from firmware_sim.modbus_server import serve_modbus
from protocols.errors import UsageError
from tests.firmware_sim.helpers import START, make_device


def _decode(regs: list[int], order: WordOrder) -> float:
    """Spec §9 word orders, written out from the byte diagram."""
    hi, lo = regs
    raw = {
        WordOrder.ABCD: struct.pack(">HH", hi, lo),
        WordOrder.CDAB: struct.pack(">HH", lo, hi),
        WordOrder.BADC: struct.pack("<HH", hi, lo),
        WordOrder.DCBA: struct.pack("<HH", lo, hi),
    }[order]
    return float(struct.unpack(">f", raw)[0])


async def test_registers_word_orders_exceptions(free_port: int) -> None:
    devices = []
    for index, order in enumerate(WordOrder):
        device = make_device(
            Utility.ELECTRICITY, index=index, transport=Transport.MODBUS, prepaid=False
        )
        object.__setattr__(device.meter.identity, "word_order", order)
        devices.append(device)
    water = make_device(Utility.WATER, index=9, transport=Transport.MODBUS, prepaid=False)
    devices.append(water)
    clock = ManualClock(START + timedelta(hours=19))
    stop, ready = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(
        serve_modbus(
            devices,
            clock=clock,
            stop=stop,
            truth=GroundTruth(None),
            host="127.0.0.1",
            first_port=free_port,
            units_per_port=3,
            options={},
            ready=ready,
        )
    )
    await asyncio.wait_for(ready.wait(), 5)
    await asyncio.sleep(0.2)  # let modbus-ticks step the meters to 19:00
    first = AsyncModbusTcpClient("127.0.0.1", port=free_port, timeout=1, retries=0)
    second = AsyncModbusTcpClient("127.0.0.1", port=free_port + 1, timeout=1, retries=0)
    await first.connect()
    await second.connect()
    try:
        for unit, device in enumerate(devices[:4]):
            client, dev_id = (first, unit + 1) if unit < 3 else (second, 1)
            order = device.meter.identity.word_order
            values = device.meter.values
            volts = await client.read_input_registers(0x0000, count=2, device_id=dev_id)
            assert abs(_decode(volts.registers, order) - values["32.7.0"]) < 1e-3
            energy = await client.read_input_registers(0x0048, count=2, device_id=dev_id)
            assert abs(_decode(energy.registers, order) - values["1.8.0"]) < 0.01
            assert 195 < _decode(volts.registers, order) < 253
            power = await client.read_input_registers(0x0034, count=2, device_id=dev_id)
            assert abs(_decode(power.registers, order) - values["1.7.0"] * 1000) < 0.5  # W
            relay = await client.read_input_registers(0x0200, count=2, device_id=dev_id)
            assert _decode(relay.registers, order) == 1.0
            missing = await client.read_input_registers(0x0100, count=2, device_id=dev_id)
            assert missing.isError() and missing.exception_code == 2
        flow = await second.read_input_registers(0x0100, count=4, device_id=2)
        assert not flow.isError()
        assert (
            abs(_decode(flow.registers[:2], WordOrder.ABCD) - water.meter.values["24.2.1"]) < 0.01
        )
        valve = await second.read_input_registers(0x0202, count=2, device_id=2)
        assert _decode(valve.registers, WordOrder.ABCD) == 1.0
        credit = await second.read_input_registers(0x0104, count=2, device_id=2)
        assert credit.exception_code == 2  # post-paid: no credit register
    finally:
        first.close()
        second.close()
        stop.set()
        await asyncio.wait_for(server, 5)


async def test_busy_and_pacing(free_port: int) -> None:
    device = make_device(Utility.ELECTRICITY, transport=Transport.MODBUS)
    stop, ready = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(
        serve_modbus(
            [device],
            clock=ManualClock(START),
            stop=stop,
            truth=GroundTruth(None),
            host="127.0.0.1",
            first_port=free_port,
            units_per_port=50,
            options={"busy": 1.0},
            ready=ready,
        )
    )
    await asyncio.wait_for(ready.wait(), 5)
    client = AsyncModbusTcpClient("127.0.0.1", port=free_port, timeout=1, retries=0)
    await client.connect()
    try:
        reply = await client.read_input_registers(0x0000, count=2, device_id=1)
        assert reply.isError() and reply.exception_code == 6
    finally:
        client.close()
        stop.set()
        await asyncio.wait_for(server, 5)


async def test_a_taken_port_fails_loudly_and_frees_the_others(free_port: int) -> None:
    devices = [
        make_device(Utility.ELECTRICITY, index=index, transport=Transport.MODBUS)
        for index in range(2)
    ]
    with (
        socket.create_server(("127.0.0.1", free_port + 1)),
        pytest.raises(UsageError, match=f"127.0.0.1:{free_port + 1}"),
    ):
        await asyncio.wait_for(
            serve_modbus(
                devices,
                clock=ManualClock(START),
                stop=asyncio.Event(),
                truth=GroundTruth(None),
                host="127.0.0.1",
                first_port=free_port,
                units_per_port=1,
                options={},
                ready=None,
            ),
            5,
        )
    # The first port's server, started before the failure, was shut down.
    with socket.create_server(("127.0.0.1", free_port)):
        pass
