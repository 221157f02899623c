"""The ``sts-token`` console script, run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.tokens.conftest import TOKEN_VECTORS

BY_ID: dict[str, dict[str, Any]] = {v["id"]: v for v in TOKEN_VECTORS}
_SCRIPT = Path(sys.executable).parent / "sts-token"
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gateway.token_cli"]
KEY07 = {"decoder_key": "e653341f9d5bf36f", "ea": "07"}
DKGA02_KEY = {
    "dkga": "02", "vending_key": "abababababababab", "pan": "600727000000000009",
    "key_type": 2, "sgc": "123456", "ti": 1, "krn": 1, "base_date": 2014, "ea": "07",
}  # fmt: skip


def sts_token(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
    return subprocess.run(
        [*COMMAND, *args], input=stdin, capture_output=True, text=True, timeout=60, env=env,
        check=False,
    )  # fmt: skip


def test_batch_mixed_good_and_bad_lines_in_order() -> None:
    lines = [
        json.dumps({"id": 1, "key": KEY07, "token": {"type": "credit", "medium": "electricity",
                                                     "tenths": 1, "rnd": 5, "tid": 5871715}}),
        "this is not json",
        json.dumps({"id": "two", "key": KEY07, "token": {"type": "credit", "medium": "water",
                                                         "tenths": 18201625}}),
        "",
        json.dumps({"id": [3], "token": {"type": "meter_test", "control": 0xFFFFFFF,
                                         "manufacturer_code": 0, "subclass": 1}}),
        json.dumps({"id": 4, "key": DKGA02_KEY,
                    "token": {"type": "key_change", "new_key": dict(DKGA02_KEY, ti=2),
                              "ken": 255, "ro": 0}}),
        json.dumps({"id": 5, "key": dict(DKGA02_KEY, pan="600727000000000001"),
                    "token": {"type": "clear_tamper"}}),
        json.dumps({"id": 6, "key": DKGA02_KEY, "token": {"type": "credit",
                                                          "medium": "gas", "tenths": 5}}),
        json.dumps({"id": 7, "key": DKGA02_KEY, "token": {"type": "credit",
                                                          "medium": "gas", "tenths": 5}}),
    ]  # fmt: skip
    result = sts_token("batch", stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == len(lines)
    assert [o["id"] for o in out] == [1, None, "two", None, [3], 4, 5, 6, 7]
    assert out[0]["tokens"] == [BY_ID["dev-01"]["expected_token"]]
    assert out[1]["error"]["code"] == "invalid_json"
    assert out[2]["error"]["code"] == "value_out_of_range"
    assert out[3]["error"]["code"] == "invalid_json"
    assert out[4]["tokens"] == [BY_ID["dev-06"]["expected_token"]]
    assert len(out[5]["tokens"]) == 2
    assert out[6]["error"]["code"] == "invalid_meter_number"
    # two drawn TIDs for one meter: both issued, strictly increasing, decodable with the key
    first = sts_token("decode", "--json", "--decoder-key", "e653341f9d5bf36f", "--ea", "07",
                      out[7]["tokens"][0])  # fmt: skip
    second = sts_token("decode", "--json", "--decoder-key", "e653341f9d5bf36f", "--ea", "07",
                       out[8]["tokens"][0])  # fmt: skip
    tid1 = json.loads(first.stdout)["fields"]["tid"]
    tid2 = json.loads(second.stdout)["fields"]["tid"]
    assert tid2 > tid1
    assert "abababab" not in result.stdout + result.stderr


def test_decode_human_and_json() -> None:
    token = BY_ID["dev-07"]["expected_token"]
    grouped = " ".join(token[i : i + 4] for i in range(0, 20, 4))
    human = sts_token("decode", "--decoder-key", "e653341f9d5bf36f", "--ea", "07", grouped)
    assert human.returncode == 0, human.stderr
    assert "SetMaximumPowerLimit" in human.stdout and "watts: 1000" in human.stdout
    as_json = sts_token("decode", "--json", "--decoder-key", "e653341f9d5bf36f", "--ea", "07",
                        token)  # fmt: skip
    assert json.loads(as_json.stdout) == {
        "type": "SetMaximumPowerLimit", "class": 2, "subclass": 0,
        "fields": {"watts": 1000, "tid": 5910301, "rnd": 5},
    }  # fmt: skip
    wrong = sts_token("decode", "--decoder-key", "0000000000000000", "--ea", "07", token)
    assert wrong.returncode == 1 and "crc_mismatch" in wrong.stderr


def test_issue_prints_grouped_tokens() -> None:
    result = sts_token(
        "issue", "credit", "--decoder-key", "e653341f9d5bf36f", "--ea", "07",
        "--medium", "electricity", "--tenths", "1", "--rnd", "5", "--tid", "5871715",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "2371 6100 5011 8319 4197\n"
    test = sts_token("issue", "meter-test", "--control", str(0xFFFFFFFFF), "--json")
    assert json.loads(test.stdout) == {"tokens": [BY_ID["dev-05"]["expected_token"]]}
    bad = sts_token("issue", "credit", "--decoder-key", "e653341f9d5bf36f", "--ea", "07",
                    "--tenths", "99999999")  # fmt: skip
    assert bad.returncode == 1 and "value_out_of_range" in bad.stderr
    assert "e653341f" not in bad.stderr


def test_decoding_a_key_change_hides_the_new_key_unless_asked() -> None:
    new_key = {**DKGA02_KEY, "vending_key": "0123456789abcdef", "krn": 2}
    change = {"type": "key_change", "new_key": new_key, "ken": 255, "ro": 0}
    request = {"id": 1, "key": DKGA02_KEY, "token": change}
    issued = sts_token("batch", stdin=json.dumps(request) + "\n")
    first_section = json.loads(issued.stdout)["tokens"][0]
    args = ("decode", "--dkga", "02", "--vending-key", "abababababababab", "--pan",
            DKGA02_KEY["pan"], "--key-type", "2", "--sgc", "123456", "--ti", "1", "--krn", "1",
            "--base-date", "2014", "--ea", "07", "--json", first_section)  # fmt: skip
    hidden = json.loads(sts_token(*args).stdout)
    shown = json.loads(sts_token(*args, "--show-key-material").stdout)
    assert hidden["fields"]["nk_high"] == "hidden"
    nk_high = shown["fields"]["nk_high"]
    assert len(nk_high) == 8 and int(nk_high, 16) >= 0
    assert nk_high not in json.dumps(hidden)


def test_issue_refuses_a_key_change_to_the_same_key() -> None:
    key = ("--dkga", "02", "--vending-key", "abababababababab", "--pan", DKGA02_KEY["pan"],
           "--key-type", "2", "--sgc", "123456", "--ti", "1", "--krn", "1",
           "--base-date", "2014", "--ea", "07")  # fmt: skip
    same = sts_token("issue", "key-change", *key)
    assert same.returncode == 1 and "equals the current key" in same.stderr
    assert same.stdout == ""
    changed = sts_token("issue", "key-change", *key, "--new-krn", "2", "--json")
    assert changed.returncode == 0 and len(json.loads(changed.stdout)["tokens"]) == 2
