"""Known-answer tests: every development vector, in both directions.

Expected values come only from the published development vectors in data/sts_dev_vectors.json.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.tokens.conftest import COMPONENTS, TOKEN_VECTORS
from tokens import (
    BaseDate,
    ClearCredit,
    DecoderKey,
    InitiateMeterTestOrDisplay,
    KeyParameters,
    Medium,
    MeterNumber,
    Set1stSectionDecoderKey,
    Set2ndSectionDecoderKey,
    Set3rdSectionDecoderKey,
    Set4thSectionDecoderKey,
    SetMaximumPowerLimit,
    TokenRecord,
    TransferCredit,
    VendingKey,
    decode,
    decode_amount,
    derive_decoder_key,
    encode,
    encode_amount,
    key_change_tokens,
    luhn_check_digit,
    tid_from_datetime,
)
from tokens.codec import data_block, untranspose
from tokens.crc import crc16_modbus, token_crc
from tokens.des import Des
from tokens.keys import dkga04_message
from tokens.misty1 import Misty1
from tokens.sta import Sta

_EA = {"EA07": "07", "EA11": "11"}


def _vector_id(vector: dict[str, Any]) -> str:
    return f"{vector['id']}-{vector['token_type']}"


def _decoder_key(vector: dict[str, Any]) -> DecoderKey | None:
    if vector["decoder_key_hex"] is None:
        return None
    return DecoderKey.from_hex(vector["decoder_key_hex"], _EA[vector["encryption_algorithm"]])


def _params(dkga: dict[str, Any], ea: str) -> KeyParameters:
    if "meter_pan" in dkga:
        meter = MeterNumber.from_pan(dkga["meter_pan"])
    else:
        meter = MeterNumber(iin=dkga["iin"], drn=dkga["iain_drn"])
    base = BaseDate.parse(dkga.get("base_date_code", "93"))
    return KeyParameters(
        meter=meter,
        key_type=dkga["key_type"],
        sgc=dkga["supply_group_code"],
        ti=int(dkga["tariff_index"]),
        krn=dkga["key_revision_number"],
        base_date=base,
        ea=dkga.get("encryption_algorithm_code", ea),
    )


def _derive(dkga: dict[str, Any], ea: str) -> DecoderKey:
    vending = VendingKey.from_hex(dkga["algorithm"], dkga["vending_key_hex"])
    return derive_decoder_key(vending, _params(dkga, ea))


def _record_from_fields(vector: dict[str, Any]) -> TokenRecord:
    """The record described by a vector's own fields (not by decoding its token)."""
    f = vector["fields"]
    cls, sub = vector["token_class"], vector["token_subclass"]
    if cls == 0:
        tenths = vector.get("requested_amount", {}).get("tenths", f.get("amount_tenths_decoded"))
        if tenths is None:
            tenths = decode_amount(f["amount_field"])
        return TransferCredit(medium=Medium(sub), tenths=tenths, tid=f["tid"], rnd=f["rnd"])
    if cls == 1:
        control = f.get("control_36bits", f.get("control_28bits"))
        return InitiateMeterTestOrDisplay(
            control=int(control, 16), manufacturer_code=f["manufacturer_code"], subclass=sub
        )
    match sub:
        case 0:
            return SetMaximumPowerLimit(watts=f["mpl_field_decoded"], tid=f["tid"], rnd=f["rnd"])
        case 1:
            return ClearCredit(register=f["register"], tid=f["tid"], rnd=f["rnd"])
        case 3:
            return Set1stSectionDecoderKey(
                ken_high=f["kenho"], krn=f["krn"], ro=f["ro"], res=f["res"], key_type=f["kt"],
                nk_high=int(f["nkho"], 16),
            )  # fmt: skip
        case 4:
            return Set2ndSectionDecoderKey(
                ken_low=f["kenlo"], ti=f["ti"], nk_low=int(f["nklo"], 16)
            )
        case 8:
            return Set3rdSectionDecoderKey(sgc_low=f["sgclo_12bits"], nk_mid2=int(f["nkmo2"], 16))
        case 9:
            return Set4thSectionDecoderKey(sgc_high=f["sgcho_12bits"], nk_mid1=int(f["nkmo1"], 16))
    raise AssertionError(f"vector {vector['id']} has a kind this test does not know")


@pytest.mark.parametrize("vector", TOKEN_VECTORS, ids=_vector_id)
def test_generate_matches_expected_token(vector: dict[str, Any]) -> None:
    record = _record_from_fields(vector)
    key = _decoder_key(vector)
    assert f"{data_block(record):016x}" == vector["data_block_hex"]
    assert f"{data_block(record) & 0xFFFF:04x}" == vector["fields"]["crc"]
    assert encode(record, key) == vector["expected_token"]
    assert int(vector["expected_token"]) == vector["token_66bit_int"]


@pytest.mark.parametrize("vector", TOKEN_VECTORS, ids=_vector_id)
def test_decode_gives_vector_fields(vector: dict[str, Any]) -> None:
    record = decode(vector["expected_token"], _decoder_key(vector))
    assert record == _record_from_fields(vector)
    assert record.token_class == vector["token_class"]
    assert record.subclass == vector["token_subclass"]
    assert record.name == vector["token_type"]
    token_class, cipher_block = untranspose(vector["token_66bit_int"])
    assert token_class == vector["token_class"]
    assert f"{cipher_block:016x}" == vector["encrypted_block_hex"]
    f = vector["fields"]
    if "amount_field" in f:
        assert isinstance(record, TransferCredit)
        assert record.amount_field == f["amount_field"]
        if "amount_tenths_decoded" in f:
            assert record.tenths == f["amount_tenths_decoded"]
    if "mpl_field" in f:
        assert isinstance(record, SetMaximumPowerLimit)
        assert encode_amount(record.watts) == f["mpl_field"]


@pytest.mark.parametrize(
    "vector", [v for v in TOKEN_VECTORS if v["dkga"]], ids=_vector_id
)  # fmt: skip
def test_dkga_derives_vector_decoder_key(vector: dict[str, Any]) -> None:
    ea = _EA[vector["encryption_algorithm"]]
    dkga = vector["dkga"]
    assert _derive(dkga, ea).key.hex() == vector["decoder_key_hex"]
    if "hmac_message_hex" in dkga:
        assert dkga04_message(_params(dkga, ea)).hex() == dkga["hmac_message_hex"]
    if "pan_block" in dkga:
        params = _params(dkga, ea)
        assert f"{params.meter.pan_block:016X}" == dkga["pan_block"].upper()
        assert f"{params.control_block:016X}" == dkga["control_block"].upper()
    for candidate in vector.get("new_key_candidates", []):
        assert _derive(candidate["dkga"], ea).key.hex() == candidate["derived_key_hex"]


def _key_change_sets() -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Group key-change vectors by (current key, new key): each group is one issued set."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for vector in TOKEN_VECTORS:
        if "new_key_candidates" in vector:
            new_hex = vector["new_key_candidates"][0]["derived_key_hex"]
            groups.setdefault((vector["decoder_key_hex"], new_hex), []).append(vector)
    return [(group[0], group) for group in groups.values()]


@pytest.mark.parametrize("first, group", _key_change_sets())
def test_key_change_set_matches_vectors(first: dict[str, Any], group: list[dict[str, Any]]) -> None:
    ea = _EA[first["encryption_algorithm"]]
    current = _decoder_key(first)
    candidate = first["new_key_candidates"][0]
    new_params = _params(candidate["dkga"], ea)
    new_key = _derive(candidate["dkga"], ea)
    section1 = next(v for v in group if v["token_subclass"] == 3)["fields"]
    section2 = next(v for v in group if v["token_subclass"] == 4)["fields"]
    tokens = key_change_tokens(
        current,  # type: ignore[arg-type]
        new_key,
        key_type=new_params.key_type,
        krn=new_params.krn,
        ti=new_params.ti,
        sgc=new_params.sgc,
        ken=section1["kenho"] << 4 | section2["kenlo"],
        ro=section1["ro"],
    )
    by_subclass = {v["token_subclass"]: v["expected_token"] for v in group}
    order = (3, 4) if len(new_key.key) == 8 else (3, 4, 8, 9)
    assert set(by_subclass) == set(order)
    assert tokens == tuple(by_subclass[sub] for sub in order)


# --- component vectors -------------------------------------------------------------------


@pytest.mark.parametrize("case", COMPONENTS["crc_field"])
def test_crc_field(case: dict[str, str]) -> None:
    data = bytes.fromhex(case["crc_input_7_bytes_hex"])
    assert f"{token_crc(int.from_bytes(data, 'big')):04x}" == case["expected_crc_field_hex"]
    register = crc16_modbus(data)
    assert f"{(register & 0xFF) << 8 | register >> 8:04x}" == case["expected_crc_field_hex"]


@pytest.mark.parametrize(
    "case", COMPONENTS["amount_encoding"], ids=lambda c: str(c["tenths_requested"])
)
def test_amount_encoding(case: dict[str, Any]) -> None:
    field = encode_amount(case["tenths_requested"])
    assert f"{field:04x}" == case["amount_field_hex"]
    assert field >> 14 == case["exponent"]
    assert field & 0x3FFF == case["mantissa"]
    assert decode_amount(field) == case["decoded_tenths"]


@pytest.mark.parametrize("case", COMPONENTS["tid"], ids=lambda c: c["issue_time"])
def test_tid(case: dict[str, Any]) -> None:
    when = datetime.fromisoformat(case["issue_time"])
    base = BaseDate.parse(case["base_date"])
    assert tid_from_datetime(when, base) == case["tid"]
    if "expected" in case:
        assert tid_from_datetime(when, base) == case["expected"]


@pytest.mark.parametrize("case", COMPONENTS["decoder_key_derivation"])
def test_decoder_key_derivation(case: dict[str, Any]) -> None:
    inputs = case["inputs"]
    ea = inputs.get("encryption_algorithm_code", "07")
    assert _derive(inputs, ea).key.hex() == case["expected_decoder_key_hex"]
    if "hmac_message_hex" in inputs:
        assert dkga04_message(_params(inputs, ea)).hex() == inputs["hmac_message_hex"]


@pytest.mark.parametrize("case", COMPONENTS["luhn_check_digit"], ids=lambda c: c["digits"])
def test_luhn(case: dict[str, Any]) -> None:
    assert luhn_check_digit(case["digits"]) == case["check_digit"]


@pytest.mark.parametrize("case", COMPONENTS["sta_raw_blocks"])
def test_sta_blocks(case: dict[str, str]) -> None:
    sta = Sta(bytes.fromhex(case["decoder_key_hex"]))
    plain, cipher = int(case["plaintext_block_hex"], 16), int(case["ciphertext_block_hex"], 16)
    assert sta.encrypt(plain) == cipher
    assert sta.decrypt(cipher) == plain


@pytest.mark.parametrize("case", COMPONENTS["misty1_rfc2994"], ids=lambda c: c["plaintext"])
def test_misty1_vectors_file(case: dict[str, str]) -> None:
    cipher = Misty1(bytes.fromhex(case["key"]))
    assert cipher.encrypt_bytes(bytes.fromhex(case["plaintext"])).hex() == case["ciphertext"]
    assert cipher.decrypt_bytes(bytes.fromhex(case["ciphertext"])).hex() == case["plaintext"]


@pytest.mark.parametrize("case", COMPONENTS["des_known_answer"])
def test_des_known_answer(case: dict[str, str]) -> None:
    des = Des(bytes.fromhex(case["key"]))
    assert des.encrypt_bytes(bytes.fromhex(case["plaintext"])).hex() == case["ciphertext"]
    assert des.decrypt_bytes(bytes.fromhex(case["ciphertext"])).hex() == case["plaintext"]


def test_every_vector_kind_is_exercised() -> None:
    """A new kind of component vector in the file must get a test here."""
    known = {
        "misty1_rfc2994", "des_known_answer", "crc_field", "crc_field_note", "amount_encoding",
        "tid", "decoder_key_derivation", "luhn_check_digit", "sta_raw_blocks",
    }  # fmt: skip
    assert set(COMPONENTS) <= known
