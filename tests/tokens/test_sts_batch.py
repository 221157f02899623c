"""The ``sts-token batch`` request format, in process (tokens.batch)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.tokens.conftest import TOKEN_VECTORS
from tokens import DecoderKey, decode
from tokens import batch as batch_module
from tokens.batch import BatchContext, process_line, process_request

BY_ID: dict[str, dict[str, Any]] = {v["id"]: v for v in TOKEN_VECTORS}
KEY07 = {"decoder_key": "e653341f9d5bf36f", "ea": "07"}
DKGA02_KEY = {
    "dkga": "02", "vending_key": "abababababababab", "pan": "600727000000000009",
    "key_type": 2, "sgc": "123456", "ti": 1, "krn": 1, "base_date": 1993, "ea": "07",
}  # fmt: skip
DKGA04_KEY = {
    "dkga": "04", "vending_key": "abababababababab949494949494949401234567",
    "pan": "600727000000000009", "key_type": 2, "sgc": "123457", "ti": 1, "krn": 1,
    "base_date": 1993, "ea": "11",
}  # fmt: skip
ISSUE_TIME = datetime(2004, 3, 1, 13, 55, 30, tzinfo=UTC)  # TID 5871715 under base 1993


def context() -> BatchContext:
    return BatchContext(clock=lambda: ISSUE_TIME, rnd=lambda: 5)


def run(request: Any, ctx: BatchContext | None = None) -> dict[str, Any]:
    return process_request(request, ctx or context())


def expected(*ids: str) -> list[str]:
    return [str(BY_ID[i]["expected_token"]) for i in ids]


def test_credit_with_decoder_key_and_explicit_fields() -> None:
    request = {"id": 7, "key": KEY07,
               "token": {"type": "credit", "medium": "electricity", "tenths": 1, "rnd": 5,
                         "tid": 5871715}}  # fmt: skip
    assert run(request) == {"id": 7, "tokens": expected("dev-01")}


def test_credit_with_drawn_rnd_and_tid() -> None:
    ctx = context()
    request = {"id": "a", "key": DKGA02_KEY,
               "token": {"type": "credit", "medium": "electricity", "tenths": 1}}  # fmt: skip
    assert run(request, ctx) == {"id": "a", "tokens": expected("dev-01")}
    # same meter, same minute: the next TID is one higher
    second = run(request, ctx)["tokens"][0]
    record = decode(second, DecoderKey.from_hex("e653341f9d5bf36f", "07"))
    assert record.tid == 5871716  # type: ignore[union-attr]


def test_dkga04_tokens() -> None:
    ea07 = dict(DKGA04_KEY, ea="07")
    request = {
        "id": 1,
        "key": ea07,
        "token": {"type": "clear_credit", "register": 65535, "rnd": 5, "tid": 8099040},
    }
    assert run(request)["tokens"] == expected("dev-12")
    request = {"id": 2, "key": DKGA04_KEY,
               "token": {"type": "credit", "medium": "electricity", "tenths": 1, "rnd": 5,
                         "tid": 5871660}}  # fmt: skip
    assert run(request)["tokens"] == expected("dev-13")


def test_management_tokens() -> None:
    mpl = {"type": "set_max_power_limit", "watts": 1000, "rnd": 5, "tid": 5910301}
    assert run({"id": 1, "key": DKGA02_KEY, "token": mpl})["tokens"] == expected("dev-07")
    for token in (
        {"type": "set_max_phase_power_unbalance_limit", "watts": 500},
        {"type": "set_tariff_rate", "rate": 12},
        {"type": "set_water_meter_factor", "factor": 3},
        {"type": "clear_tamper"},
    ):
        response = run({"id": token["type"], "key": dict(KEY07, base_date=1993), "token": token})
        assert len(response["tokens"]) == 1, response


def test_key_change_sets() -> None:
    new64 = dict(DKGA02_KEY, ti=2)
    request = {
        "id": "kc",
        "key": DKGA02_KEY,
        "token": {"type": "key_change", "new_key": new64, "ken": 255, "ro": 0},
    }
    assert run(request)["tokens"] == expected("dev-09", "dev-10")
    new128 = dict(DKGA04_KEY, ti=2)
    request = {
        "id": "kc",
        "key": DKGA04_KEY,
        "token": {"type": "key_change", "new_key": new128, "ken": 255, "ro": 0},
    }
    assert run(request)["tokens"] == expected("dev-18", "dev-19", "dev-20", "dev-21")


def test_meter_test_needs_no_key() -> None:
    request = {"id": 5, "token": {"type": "meter_test", "control": 0xFFFFFFFFF,
                                  "manufacturer_code": 0, "subclass": 0}}  # fmt: skip
    assert run(request) == {"id": 5, "tokens": expected("dev-05")}
    request = {"id": 6, "token": {"type": "meter_test", "control": 0xFFFFFFF,
                                  "manufacturer_code": 0, "subclass": 1}}  # fmt: skip
    assert run(request) == {"id": 6, "tokens": expected("dev-06")}


CREDIT = {"type": "credit", "medium": "electricity", "tenths": 10, "rnd": 1, "tid": 1}


@pytest.mark.parametrize(
    ("request_obj", "code"),
    [
        ({"id": 1, "key": KEY07, "token": dict(CREDIT, tenths=18201625)}, "value_out_of_range"),
        ({"id": 1, "key": KEY07, "token": dict(CREDIT, tenths=-1)}, "value_out_of_range"),
        ({"id": 1, "key": KEY07, "token": dict(CREDIT, tenths="10")}, "bad_request"),
        ({"id": 1, "key": KEY07, "token": dict(CREDIT, medium="currency")}, "unsupported_token"),
        ({"id": 1, "key": KEY07, "token": dict(CREDIT, medium="beer")}, "value_out_of_range"),
        ({"id": 1, "key": KEY07, "token": dict(CREDIT, rnd=16)}, "value_out_of_range"),
        ({"id": 1, "key": KEY07, "token": dict(CREDIT, tid=1 << 24)}, "value_out_of_range"),
        ({"id": 1, "key": KEY07, "token": {"type": "nope"}}, "bad_request"),
        ({"id": 1, "key": KEY07}, "bad_request"),
        ({"id": 1, "token": CREDIT}, "bad_request"),
        ({"id": 1, "key": {"decoder_key": "e653", "ea": "07"}, "token": CREDIT},
         "invalid_key_parameter"),
        ({"id": 1, "key": {"decoder_key": "e653341f9d5bf36f", "ea": "11"}, "token": CREDIT},
         "invalid_key_parameter"),
        ({"id": 1, "key": dict(DKGA02_KEY, pan="600727000000000008"), "token": CREDIT},
         "invalid_meter_number"),
        ({"id": 1, "key": dict(DKGA02_KEY, ea="11"), "token": CREDIT}, "invalid_key_parameter"),
        ({"id": 1, "key": dict(DKGA02_KEY, krn=0), "token": CREDIT}, "invalid_key_parameter"),
        ({"id": 1, "key": dict(DKGA02_KEY, key_type=4), "token": CREDIT},
         "invalid_key_parameter"),
        ({"id": 1, "key": dict(DKGA02_KEY, sgc="12345"), "token": CREDIT},
         "invalid_key_parameter"),
        ({"id": 1, "key": dict(DKGA04_KEY, base_date=2000), "token": CREDIT},
         "invalid_key_parameter"),
        ({"id": 1, "key": dict(DKGA02_KEY, base_date=1993),
          "token": {"type": "credit", "medium": "water", "tenths": 1}}, "tid_out_of_range"),
        ({"id": 1, "key": KEY07, "token": {"type": "key_change", "new_key": dict(DKGA02_KEY),
                                           "ken": 256}}, "invalid_key_parameter"),
        ({"id": 1, "token": {"type": "meter_test", "control": 1 << 36, "manufacturer_code": 0}},
         "value_out_of_range"),
        ([1, 2, 3], "bad_request"),
    ],
)  # fmt: skip
def test_bad_requests_get_error_codes(request_obj: Any, code: str) -> None:
    late = BatchContext(clock=lambda: datetime(2030, 1, 1, tzinfo=UTC), rnd=lambda: 0)
    response = run(request_obj, late)
    assert "tokens" not in response
    assert response["error"]["code"] == code, response
    assert response["id"] == (request_obj.get("id") if isinstance(request_obj, dict) else None)
    text = json.dumps(response)
    assert "abababab" not in text and "e653341f" not in text  # no secrets in errors


def test_invalid_json_line() -> None:
    response = process_line("{not json", context())
    assert response == {"id": None, "error": {"code": "invalid_json",
                                              "message": "the line is not valid JSON"}}  # fmt: skip


JSON_KEYS = ["id", "key", "token", "type", "tenths", "medium", "ea", "decoder_key", "dkga",
             "new_key", "control"]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(JSON_KEYS), children, max_size=5)
    ),
    max_leaves=12,
)


@given(json_values)
def test_any_json_gets_a_response_never_an_exception(value: Any) -> None:
    response = process_request(value, context())
    assert set(response) in ({"id", "tokens"}, {"id", "error"})


@given(
    st.dictionaries(
        st.sampled_from(["type", "medium", "tenths", "rnd", "tid", "watts"]),
        st.integers(-5, 1 << 30) | st.sampled_from(["credit", "water", "gas"]),
    )
)
def test_any_token_object_gets_a_response(token: dict[str, Any]) -> None:
    response = process_request({"id": 0, "key": KEY07, "token": token}, context())
    assert set(response) in ({"id", "tokens"}, {"id", "error"})


def test_key_cache_is_not_indexed_by_key_material(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context()
    for key in (KEY07, DKGA02_KEY, DKGA04_KEY):
        assert "tokens" in run({"key": key, "token": {"type": "clear_tamper", "tid": 1}}, ctx)
    assert len(ctx._keys) == 3
    secrets_hex = [KEY07["decoder_key"], DKGA02_KEY["vending_key"], DKGA04_KEY["vending_key"]]
    for index in ctx._keys:
        assert isinstance(index, bytes) and len(index) == 32
        for hex_key in secrets_hex:
            assert bytes.fromhex(hex_key) not in index
            assert hex_key.encode() not in index
    # Another context indexes the same keys differently (its own random secret) ...
    other = context()
    run({"key": KEY07, "token": {"type": "clear_tamper", "tid": 1}}, other)
    assert not set(other._keys) & set(ctx._keys)
    # ... and within one context, a repeated key object is derived only once.
    built: list[Any] = []
    original = batch_module._build_key

    def counting(obj: Any, where: str) -> Any:
        built.append(obj)
        return original(obj, where)

    monkeypatch.setattr(batch_module, "_build_key", counting)
    run({"key": KEY07, "token": {"type": "clear_tamper", "tid": 2}}, ctx)
    run({"key": dict(KEY07), "token": {"type": "clear_tamper", "tid": 3}}, ctx)
    run({"key": {"ea": "11", "decoder_key": "00" * 16}, "token": {"type": "clear_tamper"}}, ctx)
    assert len(built) == 1 and built[0]["ea"] == "11"
