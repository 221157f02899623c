"""Shared builders for the firmware simulator tests."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime

from firmware_sim.device import Device
from firmware_sim.faults import Fault
from firmware_sim.identity import Transport, Utility, make_identity
from firmware_sim.keypad import Keypad, medium_of
from firmware_sim.meter import Meter, MeterConfig
from firmware_sim.transmit import Transmitter

START = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # a Monday, midnight UTC
DEV_VENDING_KEY = bytes.fromhex("abababababababab")
DEV_COMMAND_MASTER = hashlib.sha256(b"firmware-sim development command master").digest()


def command_key(meter_id: str) -> bytes:
    """The documented derivation, recomputed independently of firmware_sim."""
    return hmac.new(DEV_COMMAND_MASTER, f"command-key|{meter_id}".encode(), "sha256").digest()


def make_device(
    utility: Utility,
    *,
    prepaid: bool = True,
    seed: int = 11,
    index: int = 0,
    credit: float | None = 50.0,
    faults: Sequence[Fault] = (),
    batch: int = 1,
    start: datetime = START,
    transport: Transport = Transport.MQTT,
) -> Device:
    ident = make_identity(seed, index, transport=transport, utility=utility, prepaid=prepaid)
    meter = Meter(
        ident,
        seed=seed,
        start=start,
        config=MeterConfig(initial_credit=credit),
        faults=faults,
    )
    keypad = Keypad(ident.sts, medium_of(ident)) if ident.sts is not None else None
    return Device(meter, Transmitter(ident.meter_id, batch=batch), keypad=keypad)
