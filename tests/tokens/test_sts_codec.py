"""Ciphers, codec round-trips and "any 20 digits -> token or clean error" properties."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokens import (
    MAX_AMOUNT,
    ClearCredit,
    ClearTamperCondition,
    CrcError,
    DecoderKey,
    EncryptionAlgorithm,
    InitiateMeterTestOrDisplay,
    InvalidTokenError,
    KeyParameterError,
    Medium,
    Set1stSectionDecoderKey,
    Set2ndSectionDecoderKey,
    Set3rdSectionDecoderKey,
    Set4thSectionDecoderKey,
    SetMaximumPhasePowerUnbalanceLimit,
    SetMaximumPowerLimit,
    SetTariffRate,
    SetWaterMeterFactor,
    TokenError,
    TokenRecord,
    TransferCredit,
    UnsupportedTokenError,
    ValueOutOfRangeError,
    decode,
    encode,
    format_token,
    parse_token,
)
from tokens.codec import transpose, untranspose
from tokens.crc import token_crc
from tokens.misty1 import Misty1
from tokens.sta import Sta

# --- ciphers ---------------------------------------------------------------------------

RFC2994_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.mark.parametrize(
    ("plain", "cipher"),
    [("0123456789abcdef", "8b1da5f56ab3d07c"), ("fedcba9876543210", "04b68240b13be95d")],
)
def test_misty1_rfc2994(plain: str, cipher: str) -> None:
    misty = Misty1(RFC2994_KEY)
    assert misty.encrypt_bytes(bytes.fromhex(plain)).hex() == cipher
    assert misty.decrypt_bytes(bytes.fromhex(cipher)).hex() == plain


@given(st.binary(min_size=8, max_size=8), st.integers(0, (1 << 64) - 1))
def test_sta_decrypt_inverts_encrypt(key: bytes, block: int) -> None:
    sta = Sta(key)
    assert sta.decrypt(sta.encrypt(block)) == block


@given(st.binary(min_size=16, max_size=16), st.integers(0, (1 << 64) - 1))
def test_misty1_decrypt_inverts_encrypt(key: bytes, block: int) -> None:
    misty = Misty1(key)
    assert misty.decrypt(misty.encrypt(block)) == block


def test_cipher_reprs_hide_keys() -> None:
    assert "00112233" not in repr(Misty1(RFC2994_KEY))
    assert "e653" not in repr(Sta(bytes.fromhex("e653341f9d5bf36f")))
    key = DecoderKey.from_hex("e653341f9d5bf36f", "07")
    assert "e653" not in repr(key) and "e653" not in str(key)


# --- transposition & parsing -----------------------------------------------------------


@given(st.integers(0, (1 << 64) - 1), st.integers(0, 3))
def test_transpose_round_trip(block: int, token_class: int) -> None:
    number = transpose(block, token_class)
    assert number < 1 << 66
    assert number >> 27 & 3 == token_class
    assert untranspose(number) == (token_class, block)


def test_parse_and_format() -> None:
    assert parse_token("2371-6100-5011-8319-4197") == 23716100501183194197
    assert format_token("23716100501183194197") == "2371 6100 5011 8319 4197"
    assert format_token(2305843005052951967, "-") == "0230-5843-0050-5295-1967"
    bad_tokens = [
        "", "1234", "2371610050118319419", "237161005011831941970", "2371610050118319419x",
        "73786976294838206464", "99999999999999999999", "２３７１６１００５０１１８３１９４１９７",
    ]  # fmt: skip
    for bad in bad_tokens:
        with pytest.raises(InvalidTokenError):
            parse_token(bad)
    assert parse_token("73786976294838206463") == (1 << 66) - 1


def test_crc_covers_the_class_bits() -> None:
    body = 0x5599863_0001
    assert token_crc(0 << 48 | body) != token_crc(2 << 48 | body)


# --- round trips -----------------------------------------------------------------------

rnds = st.integers(0, 15)
tids = st.integers(0, (1 << 24) - 1)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)

records: st.SearchStrategy[TokenRecord] = st.one_of(
    st.builds(TransferCredit, medium=st.sampled_from(Medium), tenths=st.integers(0, MAX_AMOUNT),
              tid=tids, rnd=rnds),
    st.builds(SetMaximumPowerLimit, watts=st.integers(0, MAX_AMOUNT), tid=tids, rnd=rnds),
    st.builds(SetMaximumPhasePowerUnbalanceLimit, watts=st.integers(0, MAX_AMOUNT), tid=tids,
              rnd=rnds),
    st.builds(ClearCredit, register=u16, tid=tids, rnd=rnds),
    st.builds(SetTariffRate, rate=u16, tid=tids, rnd=rnds),
    st.builds(ClearTamperCondition, tid=tids, rnd=rnds, pad=u16),
    st.builds(SetWaterMeterFactor, factor=u16, tid=tids, rnd=rnds),
    st.builds(Set1stSectionDecoderKey, ken_high=st.integers(0, 15), krn=st.integers(1, 9),
              ro=st.integers(0, 1), res=st.integers(0, 1), key_type=st.integers(0, 3),
              nk_high=u32),
    st.builds(Set2ndSectionDecoderKey, ken_low=st.integers(0, 15), ti=st.integers(0, 99),
              nk_low=u32),
    st.builds(Set3rdSectionDecoderKey, sgc_low=st.integers(0, 0xFFF), nk_mid2=u32),
    st.builds(Set4thSectionDecoderKey, sgc_high=st.integers(0, 0xFFF), nk_mid1=u32),
    st.integers(0, 1).flatmap(
        lambda sub: st.builds(
            InitiateMeterTestOrDisplay,
            control=st.integers(0, (1 << (36 if sub == 0 else 28)) - 1),
            manufacturer_code=st.integers(0, (1 << (8 if sub == 0 else 16)) - 1),
            subclass=st.just(sub),
        )
    ),
)  # fmt: skip


def _key(ea: EncryptionAlgorithm, raw: bytes) -> DecoderKey:
    return DecoderKey(ea, raw[: ea.key_bytes])


keys = st.builds(
    _key, st.sampled_from(list(EncryptionAlgorithm)), st.binary(min_size=16, max_size=16)
)


@given(records, keys)
def test_encode_decode_round_trip(record: TokenRecord, key: DecoderKey) -> None:
    token = encode(record, key)
    assert len(token) == 20 and token.isdigit()
    assert int(token) < 1 << 66
    assert decode(token, key) == record
    assert decode(format_token(token), key) == record


@given(records, keys, st.integers(0, 19), st.integers(1, 9))
def test_a_mistyped_digit_is_caught_or_still_a_valid_token(
    record: TokenRecord, key: DecoderKey, position: int, delta: int
) -> None:
    token = encode(record, key)
    digit = (int(token[position]) + delta) % 10
    typo = token[:position] + str(digit) + token[position + 1 :]
    try:
        decoded = decode(typo, key)
    except TokenError:
        return
    assert decoded != record  # a 1-in-65536 CRC collision yields a different token


@given(st.text(alphabet="0123456789", min_size=20, max_size=20), keys)
def test_any_20_digits_give_a_token_or_a_clean_error(digits: str, key: DecoderKey) -> None:
    try:
        record = decode(digits, key)
    except TokenError as exc:
        assert exc.code in {"invalid_token", "crc_mismatch", "unsupported_token",
                            "value_out_of_range"}  # fmt: skip
        return
    assert encode(record, key) == digits


@given(st.text(min_size=0, max_size=30))
def test_any_text_gives_a_token_or_a_clean_error(text: str) -> None:
    key = DecoderKey.from_hex("e653341f9d5bf36f", "07")
    with contextlib.suppress(TokenError):
        decode(text, key)


# --- errors ----------------------------------------------------------------------------


def test_wrong_key_is_a_crc_error() -> None:
    right = DecoderKey.from_hex("e653341f9d5bf36f", "07")
    wrong = DecoderKey.from_hex("e653341f9d5bf36e", "07")
    with pytest.raises(CrcError) as info:
        decode("23716100501183194197", wrong)
    assert info.value.code == "crc_mismatch"
    assert decode("23716100501183194197", right).tid == 5871715  # type: ignore[union-attr]


def test_encrypted_class_needs_a_key() -> None:
    with pytest.raises(KeyParameterError) as info:
        decode("23716100501183194197")
    assert info.value.code == "missing_key"
    # class 1 does not
    assert isinstance(decode("56493153725450313471"), InitiateMeterTestOrDisplay)


def test_currency_and_reserved_subclasses_are_rejected_clearly() -> None:
    key = DecoderKey.from_hex("e653341f9d5bf36f", "07")
    with pytest.raises(UnsupportedTokenError, match="currency"):
        Medium.parse("currency")
    with pytest.raises(UnsupportedTokenError, match="currency"):
        Medium.parse(5)
    # Build a well-formed class 0 subclass 5 token by hand: data block + CRC, encrypt, transpose.
    body = 5 << 40 | 5871715 << 16 | 1
    block = 5 << 60 | body << 16 | token_crc(0 << 48 | 5 << 44 | body)
    token = f"{transpose(key.cipher.encrypt(block), 0):020d}"
    with pytest.raises(UnsupportedTokenError, match="currency") as info:
        decode(token, key)
    assert info.value.code == "unsupported_token"
    reserved = 10 << 60 | body << 16 | token_crc(2 << 48 | 10 << 44 | body)
    with pytest.raises(UnsupportedTokenError):
        decode(f"{transpose(key.cipher.encrypt(reserved), 2):020d}", key)


def test_out_of_range_fields_are_rejected_on_construction() -> None:
    with pytest.raises(ValueOutOfRangeError):
        TransferCredit(medium=Medium.ELECTRICITY, tenths=MAX_AMOUNT + 1, tid=0, rnd=0)
    with pytest.raises(ValueOutOfRangeError):
        TransferCredit(medium=Medium.WATER, tenths=1, tid=1 << 24, rnd=0)
    with pytest.raises(ValueOutOfRangeError):
        ClearCredit(register=0, tid=0, rnd=16)
    with pytest.raises(ValueOutOfRangeError):
        Set1stSectionDecoderKey(ken_high=0, krn=0, ro=0, key_type=0, nk_high=0)
    with pytest.raises(ValueOutOfRangeError):
        Set2ndSectionDecoderKey(ken_low=0, ti=100, nk_low=0)
    with pytest.raises(ValueOutOfRangeError):
        InitiateMeterTestOrDisplay(control=1 << 28, manufacturer_code=0, subclass=1)


def test_credit_amount_is_normalised_to_what_the_token_carries() -> None:
    credit = TransferCredit(medium=Medium.ELECTRICITY, tenths=104490, tid=1, rnd=0)
    assert credit.tenths == 104494 and credit.amount_field == 0x626B
    assert SetMaximumPowerLimit(watts=16385, tid=1, rnd=0).watts == 16394
