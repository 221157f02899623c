"""The pricing core and the per-sale rules, on hand-computed values."""

from __future__ import annotations

from datetime import date
from decimal import Decimal as D  # noqa: N817 - short for hand-computed tables

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.vending.pricing import Block, BlockUse, Debt, MonthToDate, Tariff, price, sts_floor
from gateway.vending.rules import StsData, SupplyGroup, free_units_due, key_change_target
from tokens.amount import MAX_AMOUNT, representable_amount

# Rates VAT exclusive; with 15 % VAT a tenth costs 0.23, 0.2875, 0.345 and 0.4025.
TARIFF = Tariff(
    tariff_id=1,
    utility="electricity",
    customer_class="domestic",
    effective_from=date(2026, 7, 1),
    vat_rate=D("0.15"),
    fixed_monthly=D("0"),
    blocks=(
        Block(D(0), D(100), D("2.00")),
        Block(D(100), D(400), D("2.50")),
        Block(D(400), D(650), D("3.00")),
        Block(D(650), None, D("3.50")),
    ),
)


def test_one_block_units_round_down_to_whole_tenths() -> None:
    quote = price(D("100.00"), TARIFF, MonthToDate(), Debt())
    # 100 / 0.23 = 434.78 tenths: 434 tenths (43.4 kWh) cost 99.82; the 0.18 buys no tenth.
    assert quote.tenths == 434
    assert quote.blocks == (BlockUse(D(0), D(100), D("2.00"), 434),)
    # VAT inside 100.00: 100.00 - 86.96
    assert quote.vat == D("13.04")
    assert (quote.debt_recovered, quote.fixed, quote.energy) == (D(0), D(0), D("100.00"))


def test_purchase_crossing_a_block_boundary_is_split() -> None:
    # 95.0 kWh already bought this month: 5.0 kWh left in block 1 (50 tenths, 11.50), the
    # remaining 38.50 buys 133 tenths at 0.2875 (38.2375).
    quote = price(D("50.00"), TARIFF, MonthToDate(units_tenths=950), Debt())
    assert quote.blocks == (
        BlockUse(D(0), D(100), D("2.00"), 50),
        BlockUse(D(100), D(400), D("2.50"), 133),
    )
    assert quote.tenths == 183


def test_month_already_past_the_first_blocks() -> None:
    quote = price(D("40.25"), TARIFF, MonthToDate(units_tenths=7000), Debt())
    # 40.25 / 0.4025 = exactly 100 tenths in the open block
    assert quote.blocks == (BlockUse(D(650), None, D("3.50"), 100),)


def test_debt_recovery_share_is_taken_before_units() -> None:
    quote = price(D("100.00"), TARIFF, MonthToDate(), Debt(D("30.00"), D(20)))
    assert quote.debt_recovered == D("20.00")
    # 80.00 / 0.23 = 347.8 tenths; VAT in 80.00 = 80.00 - 69.57
    assert quote.tenths == 347
    assert quote.vat == D("10.43")


def test_debt_recovery_is_capped_by_the_arrears() -> None:
    quote = price(D("100.00"), TARIFF, MonthToDate(), Debt(D("5.55"), D(60)))
    assert quote.debt_recovered == D("5.55")


def test_debt_share_rounds_down_to_the_cent() -> None:
    quote = price(D("10.01"), TARIFF, MonthToDate(), Debt(D("100"), D("33.33")))
    # 10.01 * 0.3333 = 3.336333 -> 3.33
    assert quote.debt_recovered == D("3.33")


def test_fixed_monthly_charge_is_collected_across_the_month() -> None:
    tariff = Tariff(
        tariff_id=2,
        utility="electricity",
        customer_class="domestic",
        effective_from=date(2026, 7, 1),
        vat_rate=D("0.15"),
        fixed_monthly=D("100.00"),
        blocks=TARIFF.blocks,
    )
    first = price(D("50.00"), tariff, MonthToDate(), Debt())
    assert (first.fixed, first.energy, first.tenths) == (D("50.00"), D(0), 0)
    # 115.00 due with VAT; 50.00 paid: 65.00 more, then 35.00 / 0.23 = 152.2 tenths
    second = price(D("100.00"), tariff, MonthToDate(fixed_paid=D("50.00")), Debt())
    assert (second.fixed, second.energy, second.tenths) == (D("65.00"), D("35.00"), 152)
    assert second.vat == D("13.04")
    third = price(D("23.00"), tariff, MonthToDate(fixed_paid=D("115.00")), Debt())
    assert (third.fixed, third.tenths) == (D(0), 100)


def test_large_purchase_rounds_down_to_an_amount_a_token_carries() -> None:
    quote = price(D("5000.00"), TARIFF, MonthToDate(units_tenths=7000), Debt())
    # 5000 / 0.4025 = 12422.36 tenths: fits exponent 0 exactly
    assert quote.tenths == 12422
    big = Tariff(
        tariff_id=3,
        utility="electricity",
        customer_class="domestic",
        effective_from=date(2026, 7, 1),
        vat_rate=D(0),
        fixed_monthly=D(0),
        blocks=(Block(D(0), None, D("0.10")),),
    )
    # 2000.07 at 0.01 a tenth = 200007 tenths; exponent 2 steps by 100 above 180224
    quote = price(D("2000.07"), big, MonthToDate(), Debt())
    assert quote.tenths == 199_924
    assert quote.blocks == (BlockUse(D(0), None, D("0.10"), 199_924),)


def test_zero_amount_buys_nothing() -> None:
    quote = price(D("0.00"), TARIFF, MonthToDate(), Debt(D(10), D(50)))
    assert (quote.tenths, quote.vat, quote.debt_recovered) == (0, D(0), D(0))


def test_amount_with_part_cents_is_refused() -> None:
    with pytest.raises(ValueError, match="whole cents"):
        price(D("1.005"), TARIFF, MonthToDate(), Debt())


def test_tariff_blocks_must_be_contiguous() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        Tariff(
            1,
            "water",
            "domestic",
            date(2026, 1, 1),
            D("0.15"),
            D(0),
            (Block(D(0), D(6), D(1)), Block(D(7), None, D(2))),
        )


@pytest.mark.parametrize(
    ("tenths", "floor"),
    [
        (0, 0),
        (16383, 16383),
        (16384, 16384),
        (16389, 16384),
        (16394, 16394),
        (200_000, 199_924),
        (MAX_AMOUNT + 5, MAX_AMOUNT),
    ],
)
def test_sts_floor_known_values(tenths: int, floor: int) -> None:
    assert sts_floor(tenths) == floor


@given(st.integers(min_value=0, max_value=MAX_AMOUNT))
def test_sts_floor_is_exact_and_never_above(tenths: int) -> None:
    floor = sts_floor(tenths)
    assert floor <= tenths
    assert representable_amount(floor) == floor
    # nothing representable lies between the floor and the request
    assert floor == tenths or representable_amount(floor + 1) > tenths


@given(
    amount=st.decimals(min_value=0, max_value=10_000, places=2),
    start=st.integers(min_value=0, max_value=20_000),
    share=st.decimals(min_value=0, max_value=100, places=2),
    arrears=st.decimals(min_value=0, max_value=1_000, places=2),
)
def test_never_more_units_than_paid_for(amount: D, start: int, share: D, arrears: D) -> None:
    quote = price(amount, TARIFF, MonthToDate(units_tenths=start), Debt(arrears, share))
    cost = sum((D(use.tenths) * use.rate * D("1.15") / 10 for use in quote.blocks), start=D(0))
    assert cost <= quote.energy
    assert quote.debt_recovered + quote.fixed + quote.energy == amount
    assert sum(use.tenths for use in quote.blocks) == quote.tenths


STS = StsData(sgc="123456", krn=1, ti=1, key_type=2, base_date=2014, ea="07", dkga="02")


def test_key_data_up_to_date_needs_no_change() -> None:
    assert key_change_target(STS, None) is None
    assert key_change_target(STS, SupplyGroup("123456", 1, 2014)) is None


def test_1993_base_date_moves_to_2014() -> None:
    old = StsData("123456", 1, 1, 2, 1993, "07", "04")
    assert key_change_target(old, None) == StsData("123456", 1, 1, 2, 2014, "07", "04")
    assert key_change_target(old, SupplyGroup("123456", 2, 2014)) == StsData(
        "123456", 2, 1, 2, 2014, "07", "04"
    )


def test_new_revision_group_and_tariff_index() -> None:
    assert key_change_target(STS, SupplyGroup("123456", 3, 2014)) == StsData(
        "123456", 3, 1, 2, 2014, "07", "02"
    )
    moved = key_change_target(STS, SupplyGroup("654321", 1, 2014), target_sgc="654321")
    assert moved is not None and moved.sgc == "654321"
    retariffed = key_change_target(STS, None, target_ti=7)
    assert retariffed is not None and retariffed.ti == 7


@pytest.mark.parametrize(
    ("start", "end", "issued", "due"),
    [
        (date(2026, 1, 1), None, False, True),
        (date(2026, 1, 1), None, True, False),
        (date(2027, 1, 1), None, False, False),
        (None, date(2026, 11, 30), False, False),
        (None, date(2026, 12, 1), False, True),
    ],
)
def test_free_units_due(start: date | None, end: date | None, issued: bool, due: bool) -> None:
    assert (
        free_units_due(
            indigent_from=start,
            indigent_to=end,
            on_register=start is not None or end is not None,
            today=date(2026, 12, 1),
            issued_this_month=issued,
        )
        is due
    )


def test_not_on_register_gets_no_free_units() -> None:
    assert not free_units_due(
        indigent_from=None,
        indigent_to=None,
        on_register=False,
        today=date(2026, 12, 1),
        issued_this_month=False,
    )
