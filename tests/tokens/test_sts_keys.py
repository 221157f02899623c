"""Key parameters, DKGA validation and secret handling."""

from __future__ import annotations

import pytest

from tokens import (
    BaseDate,
    DecoderKey,
    Dkga,
    EncryptionAlgorithm,
    KeyParameterError,
    KeyParameters,
    KeyType,
    MeterNumber,
    VendingKey,
    dkga02,
    dkga04,
)

METER = MeterNumber.from_pan("600727000000000009")
VK02 = VendingKey.from_hex("02", "abababababababab")
VK04 = VendingKey.from_hex("04", "abababababababab949494949494949401234567")


def params(**overrides: object) -> KeyParameters:
    values: dict[str, object] = {
        "meter": METER, "key_type": 2, "sgc": "123456", "ti": 1, "krn": 1,
        "base_date": 1993, "ea": "07",
    }  # fmt: skip
    values.update(overrides)
    return KeyParameters(**values)  # type: ignore[arg-type]


def test_parameters_are_normalised() -> None:
    p = params(key_type="2", ti="07", sgc=1234, ea="EA11", base_date="14")
    assert p.key_type is KeyType.UNIQUE
    assert (p.ti, p.sgc, p.ea, p.base_date) == (7, "001234", EncryptionAlgorithm.EA11,
                                                BaseDate.Y2014)  # fmt: skip


@pytest.mark.parametrize(
    "bad",
    [{"key_type": 4}, {"key_type": -1}, {"krn": 0}, {"krn": 10}, {"ti": 100}, {"ti": -1},
     {"sgc": "12345a"}, {"sgc": "1234567"}, {"sgc": True}, {"base_date": 2000},
     {"ea": "08"}, {"ea": None}],
)  # fmt: skip
def test_bad_parameters_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(KeyParameterError) as info:
        params(**bad)
    assert info.value.code == "invalid_key_parameter"


def test_dkga_combinations() -> None:
    with pytest.raises(KeyParameterError):
        dkga02(VK02, params(ea="11"))  # DKGA02 yields 64-bit keys only
    with pytest.raises(KeyParameterError):
        dkga02(VK04, params())
    with pytest.raises(KeyParameterError):
        dkga04(VK02, params())
    with pytest.raises(KeyParameterError):
        dkga04(VK04, params(ea="09"))
    assert len(dkga04(VK04, params(ea="11")).key) == 16
    assert len(dkga02(VK02, params(ea="09")).key) == 8


@pytest.mark.parametrize(
    ("dkga", "hex_key"),
    [("02", "abab"), ("02", "abababababababab00"), ("04", "abababababababab"), ("03", "ab" * 8),
     ("02", "not hex at all!!")],
)  # fmt: skip
def test_bad_vending_keys(dkga: str, hex_key: str) -> None:
    with pytest.raises(KeyParameterError) as info:
        VendingKey.from_hex(dkga, hex_key)
    assert hex_key not in str(info.value)


def test_decoder_key_lengths() -> None:
    with pytest.raises(KeyParameterError):
        DecoderKey.from_hex("e653341f9d5bf36f", "11")
    with pytest.raises(KeyParameterError):
        DecoderKey.from_hex("00" * 16, "07")
    assert DecoderKey.from_hex("00" * 16, "11").ea is EncryptionAlgorithm.EA11


def test_secrets_never_in_repr() -> None:
    for obj in (VK02, VK04, dkga02(VK02, params()), dkga04(VK04, params(ea="11"))):
        text = repr(obj) + str(obj)
        assert "abab" not in text.lower()
        assert "hidden" in text
    key = dkga02(VK02, params())
    assert key.key.hex() not in repr(key)
    assert Dkga.parse("DKGA04") is Dkga.DKGA04


def test_control_block_layout() -> None:
    # KT(1) ‖ SGC(6) ‖ TI(2) ‖ KRN(1) ‖ FFFFFF
    assert params(key_type=3, sgc="987654", ti=42, krn=9).control_block == 0x3987654429FFFFFF
