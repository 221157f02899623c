"""The meter-side decoder model: acceptance, rejection reasons and key changes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.tokens.conftest import TOKEN_VECTORS
from tokens import (
    Accepted,
    ClearCredit,
    ClearTamperCondition,
    DecoderKey,
    Medium,
    MeterDecoder,
    Rejected,
    RejectReason,
    SetMaximumPowerLimit,
    TransferCredit,
    encode,
    key_change_tokens,
)

BY_ID: dict[str, dict[str, Any]] = {v["id"]: v for v in TOKEN_VECTORS}
KEY07 = DecoderKey.from_hex("e653341f9d5bf36f", "07")
KEY11 = DecoderKey.from_hex("f94b6ed353c3bfdb113e2d3a7ea3c41d", "11")


def token(vector_id: str) -> str:
    return str(BY_ID[vector_id]["expected_token"])


def credit(key: DecoderKey, tenths: int, tid: int, medium: Medium = Medium.ELECTRICITY) -> str:
    return encode(TransferCredit(medium=medium, tenths=tenths, tid=tid, rnd=3), key)


def test_credit_is_applied() -> None:
    meter = MeterDecoder(KEY07)
    result = meter.accept(token("dev-01"))
    assert isinstance(result, Accepted) and result.accepted
    assert meter.credit(Medium.ELECTRICITY) == 1
    assert meter.accept(token("dev-03")).accepted  # water, 0.1 m3
    assert meter.accept(token("dev-11")).accepted  # the maximum amount
    state = meter.state()
    assert state.credit[Medium.WATER] == 1
    assert state.credit[Medium.ELECTRICITY] == 1 + 18201624
    assert state.remembered_tids == (5871715, 5871725, 5915634)
    assert meter.use_credit(Medium.WATER, 5) == 1 and meter.credit(Medium.WATER) == 0


def test_replayed_token_is_rejected() -> None:
    meter = MeterDecoder(KEY07)
    assert meter.accept(token("dev-01")).accepted
    again = meter.accept(token("dev-01"))
    assert isinstance(again, Rejected) and again.reason is RejectReason.TID_REUSED
    assert meter.credit(Medium.ELECTRICITY) == 1


def test_tid_older_than_the_window_is_rejected() -> None:
    meter = MeterDecoder(KEY07, tid_memory=2)
    assert meter.accept(credit(KEY07, 10, 100)).accepted
    assert meter.accept(credit(KEY07, 10, 200)).accepted
    assert meter.accept(credit(KEY07, 10, 300)).accepted  # 100 falls out of the memory
    assert meter.state().remembered_tids == (200, 300)
    old = meter.accept(credit(KEY07, 10, 150))
    assert isinstance(old, Rejected) and old.reason is RejectReason.TID_TOO_OLD
    assert meter.accept(credit(KEY07, 10, 250)).accepted  # newer than the oldest remembered
    assert meter.credit(Medium.ELECTRICITY) == 40


def test_wrong_key_and_garbage_are_rejected_with_reasons() -> None:
    meter = MeterDecoder(DecoderKey.from_hex("0000000000000001", "07"))
    wrong = meter.accept(token("dev-01"))
    assert isinstance(wrong, Rejected) and wrong.reason is RejectReason.CRC_MISMATCH
    short = meter.accept("1234")
    assert isinstance(short, Rejected) and short.reason is RejectReason.INVALID_TOKEN
    big = meter.accept("99999999999999999999")
    assert isinstance(big, Rejected) and big.reason is RejectReason.INVALID_TOKEN
    assert meter.state().remembered_tids == ()


def test_management_tokens_change_state() -> None:
    meter = MeterDecoder(KEY07)
    meter.set_tamper()
    assert meter.accept(token("dev-07")).accepted  # MPL 1000 W
    assert meter.max_power_limit == 1000
    assert meter.accept(credit(KEY07, 500, 5910302)).accepted
    assert meter.accept(token("dev-08")).accepted  # clear all credit
    assert meter.credit(Medium.ELECTRICITY) == 0
    assert meter.accept(encode(ClearTamperCondition(tid=5910400, rnd=1), KEY07)).accepted
    assert meter.tamper is False
    unknown = meter.accept(encode(ClearCredit(register=9, tid=5910401, rnd=1), KEY07))
    assert isinstance(unknown, Rejected) and unknown.reason is RejectReason.VALUE_OUT_OF_RANGE


def test_meter_test_tokens_need_no_key() -> None:
    meter = MeterDecoder(KEY07)
    assert meter.accept(token("dev-05")).accepted
    assert meter.accept(token("dev-06")).accepted
    assert meter.accept(token("dev-05")).accepted  # no TID, so no replay rule


def test_wrong_medium_is_rejected() -> None:
    water_meter = MeterDecoder(KEY07, media=[Medium.WATER])
    result = water_meter.accept(token("dev-01"))
    assert isinstance(result, Rejected) and result.reason is RejectReason.WRONG_MEDIUM
    assert water_meter.accept(token("dev-03")).accepted


def test_key_expiry_number() -> None:
    meter = MeterDecoder(KEY07, ken=0x59)
    assert meter.accept(credit(KEY07, 1, 0x59FFFF)).accepted
    expired = meter.accept(credit(KEY07, 1, 0x5A0000))
    assert isinstance(expired, Rejected) and expired.reason is RejectReason.KEY_EXPIRED


def test_64bit_key_change_applies_after_both_sections() -> None:
    new_key = DecoderKey.from_hex("060b8643c59a27f1", "07")  # dev-09's new key candidate
    meter = MeterDecoder(KEY07, ti=1)
    first = meter.accept(token("dev-09"))
    assert isinstance(first, Accepted) and not first.key_changed
    assert meter.key == KEY07 and meter.state().pending_sections == (3,)
    assert meter.accept(token("dev-01")).accepted  # still the old key
    second = meter.accept(token("dev-10"))
    assert isinstance(second, Accepted) and second.key_changed
    assert meter.key == new_key
    assert (meter.ti, meter.krn, meter.ken, int(meter.key_type)) == (2, 1, 255, 2)
    old = meter.accept(token("dev-02"))
    assert isinstance(old, Rejected) and old.reason is RejectReason.CRC_MISMATCH
    assert meter.accept(credit(new_key, 50, 5871800)).accepted
    # RO = 0: the TID memory is kept, a replayed TID is still refused under the new key
    replay = meter.accept(credit(new_key, 50, 5871715))
    assert isinstance(replay, Rejected) and replay.reason is RejectReason.TID_REUSED


def test_128bit_key_change_needs_all_four_sections_in_any_order() -> None:
    new_key = DecoderKey.from_hex("b208834372ef892ef6e04c28593090d4", "11")
    meter = MeterDecoder(KEY11)
    for vector_id in ("dev-14", "dev-15", "dev-16"):  # 1st, 4th, 2nd
        result = meter.accept(token(vector_id))
        assert isinstance(result, Accepted) and not result.key_changed
        assert meter.key == KEY11
    assert meter.accept(token("dev-13")).accepted  # credit under the old key still works
    last = meter.accept(token("dev-17"))  # 3rd
    assert isinstance(last, Accepted) and last.key_changed
    assert meter.key == new_key and meter.sgc == "123457" and meter.ti == 2


def test_rollover_clears_the_tid_memory() -> None:
    new_key = DecoderKey.from_hex("1122334455667788", "07")
    meter = MeterDecoder(KEY07)
    assert meter.accept(credit(KEY07, 10, 16_000_000)).accepted
    for section in key_change_tokens(
        KEY07, new_key, key_type=2, krn=2, ti=1, sgc=None, ken=255, ro=1
    ):
        assert meter.accept(section).accepted
    assert meter.key == new_key and meter.krn == 2
    assert meter.state().remembered_tids == ()
    assert meter.accept(credit(new_key, 10, 5)).accepted  # small TID under the new base date


def test_128bit_sections_are_refused_by_a_64bit_meter() -> None:
    meter = MeterDecoder(KEY07)
    sections = key_change_tokens(KEY07, KEY11, key_type=2, krn=1, ti=1, sgc="123456", ken=255, ro=0)
    result = meter.accept(sections[2])
    assert isinstance(result, Rejected) and result.reason is RejectReason.UNSUPPORTED


@pytest.mark.parametrize("watts", [0, 1000, 16385])
def test_power_limit_round_up(watts: int) -> None:
    meter = MeterDecoder(KEY07)
    record = SetMaximumPowerLimit(watts=watts, tid=7, rnd=1)
    assert meter.accept(encode(record, KEY07)).accepted
    assert meter.max_power_limit == record.watts >= watts
