"""Amounts, TIDs, meter numbers and CRC: edge cases computed by hand from DOMAIN.md §2."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokens import (
    MAX_AMOUNT,
    BaseDate,
    InvalidMeterNumberError,
    MeterNumber,
    TidAllocator,
    TidOutOfRangeError,
    ValueOutOfRangeError,
    datetime_from_tid,
    decode_amount,
    encode_amount,
    luhn_check_digit,
    luhn_valid,
    tenths_from_units,
    tid_from_datetime,
)
from tokens.amount import representable_amount

# --- amount: value = m * 10**e + offset_e, offsets 0, 16384, 180224, 1818624 -------------


@pytest.mark.parametrize(
    ("tenths", "field", "carried"),
    [
        (0, 0x0000, 0),
        (1, 0x0001, 1),
        (16383, 0x3FFF, 16383),  # largest e=0
        (16384, 0x4000, 16384),  # e=1, m=0
        (16385, 0x4001, 16394),  # e=1, m=ceil(1/10)=1: rounded up to 16384+10
        (16394, 0x4001, 16394),
        (16395, 0x4002, 16404),
        (180214, 0x7FFF, 180214),  # e=1, m=16383: 163830+16384
        (180215, 0x8000, 180224),  # between e=1 max and e=2 offset: m=0 of e=2
        (180225, 0x8001, 180324),  # e=2, m=ceil(1/100)=1
        (1818524, 0xBFFF, 1818524),  # e=2, m=16383: 1638300+180224
        (1818525, 0xC000, 1818624),  # e=3, m=0
        (1818625, 0xC001, 1819624),  # e=3, m=ceil(1/1000)=1
        (18201624, 0xFFFF, 18201624),  # e=3, m=16383: 16383000+1818624
    ],
)
def test_amount_encoding_edges(tenths: int, field: int, carried: int) -> None:
    assert encode_amount(tenths) == field
    assert decode_amount(field) == carried
    assert representable_amount(tenths) == carried


def test_amount_maximum_and_beyond() -> None:
    assert MAX_AMOUNT == 18201624
    with pytest.raises(ValueOutOfRangeError):
        encode_amount(18201625)
    with pytest.raises(ValueOutOfRangeError):
        encode_amount(-1)
    with pytest.raises(ValueOutOfRangeError):
        encode_amount(True)
    with pytest.raises(ValueOutOfRangeError):
        decode_amount(0x10000)


@pytest.mark.parametrize(
    ("units", "tenths"),
    [("1.82", 19), ("1.8", 18), ("1.81", 19), ("0.01", 1), ("0", 0), (5, 50),
     (Decimal("1820162.4"), 18201624), ("0.1", 1)],
)  # fmt: skip
def test_tenths_from_units_rounds_up(units: str | int | Decimal, tenths: int) -> None:
    assert tenths_from_units(units) == tenths


@pytest.mark.parametrize("bad", ["-1", "abc", "NaN", "Infinity", 1.5])
def test_tenths_from_units_rejects(bad: object) -> None:
    with pytest.raises(ValueOutOfRangeError):
        tenths_from_units(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=MAX_AMOUNT))
def test_amount_rounds_up_to_the_smallest_representable(tenths: int) -> None:
    field = encode_amount(tenths)
    carried = decode_amount(field)
    assert carried >= tenths
    assert encode_amount(carried) == field
    # nothing representable lies in [tenths, carried): the field just below carries less
    if field & 0x3FFF:
        assert decode_amount(field - 1) < tenths


@given(st.integers(min_value=0, max_value=0xFFFF))
def test_every_amount_field_round_trips(field: int) -> None:
    assert encode_amount(decode_amount(field)) == field


# --- TID -------------------------------------------------------------------------------


def test_tid_base_dates() -> None:
    assert tid_from_datetime(datetime(2014, 1, 1, tzinfo=UTC), BaseDate.Y2014) == 0
    assert tid_from_datetime(datetime(2014, 1, 1, 0, 1, 59), BaseDate.Y2014) == 1
    assert tid_from_datetime(datetime(2035, 1, 1, 1, 0, tzinfo=UTC), BaseDate.Y2035) == 60
    assert BaseDate.Y1993.code == "93" and BaseDate.Y2014.code == "14"
    assert BaseDate.parse("35") is BaseDate.Y2035
    assert BaseDate.parse("1993-01-01") is BaseDate.Y1993


def test_tid_1993_runs_out_on_2024_11_24_20_15() -> None:
    assert (
        tid_from_datetime(datetime(2024, 11, 24, 20, 15, tzinfo=UTC), BaseDate.Y1993)
        == (1 << 24) - 1
    )
    with pytest.raises(TidOutOfRangeError):
        tid_from_datetime(datetime(2024, 11, 24, 20, 16, tzinfo=UTC), BaseDate.Y1993)
    with pytest.raises(TidOutOfRangeError):
        tid_from_datetime(datetime(2013, 12, 31, 23, 59, tzinfo=UTC), BaseDate.Y2014)


def test_tid_uses_utc_wall_clock_not_local_offsets() -> None:
    sast = timezone(timedelta(hours=2))
    local = datetime(2004, 3, 1, 15, 55, tzinfo=sast)  # = 13:55 UTC
    assert tid_from_datetime(local, BaseDate.Y1993) == 5871715
    assert datetime_from_tid(5871715, BaseDate.Y1993) == datetime(2004, 3, 1, 13, 55, tzinfo=UTC)


def test_tid_allocator_is_strictly_increasing_within_a_minute() -> None:
    allocator = TidAllocator()
    now = datetime(2004, 3, 1, 13, 55, 10, tzinfo=UTC)
    tids = [allocator.allocate("m1", now, BaseDate.Y1993) for _ in range(3)]
    assert tids == [5871715, 5871716, 5871717]
    # another meter is independent
    assert allocator.allocate("m2", now, BaseDate.Y1993) == 5871715
    # the clock catching up resumes real minutes
    later = now + timedelta(minutes=10)
    assert allocator.allocate("m1", later, BaseDate.Y1993) == 5871725
    allocator.observe("m1", 5871800, BaseDate.Y1993)
    assert allocator.allocate("m1", later, BaseDate.Y1993) == 5871801
    assert allocator.last("m1", BaseDate.Y1993) == 5871801


# --- meter numbers ---------------------------------------------------------------------


def test_meter_pan_forms() -> None:
    long_form = MeterNumber.from_pan("600727000000000009")
    assert (long_form.iin, long_form.drn) == ("600727", "00000000000")
    assert long_form.pan_block == 0x0072700000000000
    short_form = MeterNumber.from_drn("0100000000008")
    assert short_form.pan == "000001000000000082"
    assert short_form.pan_block == 0x0000100000000008
    # DOMAIN.md example: IIN 600727 + DRN 12345678903 -> PANBlock 0072712345678903
    assert MeterNumber.from_drn("12345678903").pan_block == 0x0072712345678903


@pytest.mark.parametrize(
    "pan",
    ["600727000000000008",  # PAN check digit wrong
     "600727000000000109",  # DRN check digit wrong (and PAN)
     "60072700000000000",  # 17 digits
     "700727000000000009",  # unknown IIN
     "60072700000000000x"],
)  # fmt: skip
def test_bad_pans_are_rejected(pan: str) -> None:
    with pytest.raises(InvalidMeterNumberError):
        MeterNumber.from_pan(pan)


def test_luhn_hand_computed() -> None:
    # 7992739871 -> 3 is the textbook Luhn example
    assert luhn_check_digit("7992739871") == 3
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    with pytest.raises(InvalidMeterNumberError):
        luhn_check_digit("12a4")
