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


def sts_token(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
    full_env.update(env or {})
    return subprocess.run(
        [*COMMAND, *args], input=stdin, capture_output=True, text=True, timeout=60, env=full_env,
        check=False,
    )  # fmt: skip


KEY07_ENV = {"STS_DECODER_KEY": "e653341f9d5bf36f"}
VENDING_ENV = {"STS_VENDING_KEY": "abababababababab"}


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
    first = sts_token("decode", "--json", "--ea", "07", out[7]["tokens"][0], env=KEY07_ENV)
    second = sts_token("decode", "--json", "--ea", "07", out[8]["tokens"][0], env=KEY07_ENV)
    tid1 = json.loads(first.stdout)["fields"]["tid"]
    tid2 = json.loads(second.stdout)["fields"]["tid"]
    assert tid2 > tid1
    assert "abababab" not in result.stdout + result.stderr


def test_decode_human_and_json() -> None:
    token = BY_ID["dev-07"]["expected_token"]
    grouped = " ".join(token[i : i + 4] for i in range(0, 20, 4))
    human = sts_token("decode", "--ea", "07", grouped, env=KEY07_ENV)
    assert human.returncode == 0, human.stderr
    assert "SetMaximumPowerLimit" in human.stdout and "watts: 1000" in human.stdout
    as_json = sts_token("decode", "--json", "--ea", "07", token, env=KEY07_ENV)
    assert json.loads(as_json.stdout) == {
        "type": "SetMaximumPowerLimit", "class": 2, "subclass": 0,
        "fields": {"watts": 1000, "tid": 5910301, "rnd": 5},
    }  # fmt: skip
    wrong = sts_token("decode", "--ea", "07", token, env={"STS_DECODER_KEY": "0" * 16})
    assert wrong.returncode == 1 and "crc_mismatch" in wrong.stderr


def test_issue_prints_grouped_tokens() -> None:
    result = sts_token(
        "issue", "credit", "--ea", "07",
        "--medium", "electricity", "--tenths", "1", "--rnd", "5", "--tid", "5871715",
        env=KEY07_ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "2371 6100 5011 8319 4197\n"
    test = sts_token("issue", "meter-test", "--control", str(0xFFFFFFFFF), "--json")
    assert json.loads(test.stdout) == {"tokens": [BY_ID["dev-05"]["expected_token"]]}
    bad = sts_token("issue", "credit", "--ea", "07", "--tenths", "99999999", env=KEY07_ENV)
    assert bad.returncode == 1 and "value_out_of_range" in bad.stderr
    assert "e653341f" not in bad.stderr


def test_decoding_a_key_change_hides_the_new_key_unless_asked() -> None:
    new_key = {**DKGA02_KEY, "vending_key": "0123456789abcdef", "krn": 2}
    change = {"type": "key_change", "new_key": new_key, "ken": 255, "ro": 0}
    request = {"id": 1, "key": DKGA02_KEY, "token": change}
    issued = sts_token("batch", stdin=json.dumps(request) + "\n")
    first_section = json.loads(issued.stdout)["tokens"][0]
    args = ("decode", "--dkga", "02", "--pan",
            DKGA02_KEY["pan"], "--key-type", "2", "--sgc", "123456", "--ti", "1", "--krn", "1",
            "--base-date", "2014", "--ea", "07", "--json", first_section)  # fmt: skip
    hidden = json.loads(sts_token(*args, env=VENDING_ENV).stdout)
    shown = json.loads(sts_token(*args, "--show-key-material", env=VENDING_ENV).stdout)
    assert hidden["fields"]["nk_high"] == "hidden"
    nk_high = shown["fields"]["nk_high"]
    assert len(nk_high) == 8 and int(nk_high, 16) >= 0
    assert nk_high not in json.dumps(hidden)


def test_issue_refuses_a_key_change_to_the_same_key() -> None:
    key = ("--dkga", "02", "--pan", DKGA02_KEY["pan"],
           "--key-type", "2", "--sgc", "123456", "--ti", "1", "--krn", "1",
           "--base-date", "2014", "--ea", "07")  # fmt: skip
    same = sts_token("issue", "key-change", *key, env=VENDING_ENV)
    assert same.returncode == 1 and "equals the current key" in same.stderr
    assert same.stdout == ""
    changed = sts_token("issue", "key-change", *key, "--new-krn", "2", "--json", env=VENDING_ENV)
    assert changed.returncode == 0 and len(json.loads(changed.stdout)["tokens"]) == 2


CREDIT = ("issue", "credit", "--ea", "07", "--medium", "electricity", "--tenths", "1",
          "--rnd", "5", "--tid", "5871715")  # fmt: skip
EXPECTED = "2371 6100 5011 8319 4197\n"


def test_keys_come_from_a_file_stdin_or_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "decoder.hex"
    key_file.write_text("e653341f9d5bf36f\n")
    from_file = sts_token(*CREDIT, "--decoder-key-file", str(key_file))
    assert (from_file.returncode, from_file.stdout) == (0, EXPECTED), from_file.stderr
    from_stdin = sts_token(*CREDIT, "--decoder-key-file", "-", stdin="e653341f9d5bf36f\n")
    assert (from_stdin.returncode, from_stdin.stdout) == (0, EXPECTED), from_stdin.stderr
    from_env = sts_token(*CREDIT, env=KEY07_ENV)
    assert (from_env.returncode, from_env.stdout) == (0, EXPECTED), from_env.stderr
    # An explicit file wins over the environment.
    wins = sts_token(*CREDIT, "--decoder-key-file", str(key_file), env={"STS_DECODER_KEY": "00"})
    assert wins.stdout == EXPECTED
    # A DKGA key change: current vending key from a file, the new one from stdin.
    vending_file = tmp_path / "vending.hex"
    vending_file.write_text("abababababababab")
    dkga = ("--dkga", "02", "--pan", DKGA02_KEY["pan"], "--key-type", "2", "--sgc", "123456",
            "--ti", "1", "--krn", "1", "--base-date", "2014", "--ea", "07")  # fmt: skip
    change = sts_token(
        "issue", "key-change", *dkga, "--vending-key-file", str(vending_file),
        "--new-vending-key-file", "-", "--json", stdin="0123456789abcdef",
    )  # fmt: skip
    assert change.returncode == 0, change.stderr
    batch = sts_token("batch", stdin=json.dumps({
        "id": 1, "key": DKGA02_KEY,
        "token": {"type": "key_change", "ken": 255, "ro": 0,
                  "new_key": {**DKGA02_KEY, "vending_key": "0123456789abcdef"}},
    }) + "\n")  # fmt: skip
    assert json.loads(change.stdout)["tokens"] == json.loads(batch.stdout)["tokens"]


def test_keys_on_the_command_line_are_refused_without_repeating_them() -> None:
    for option in ("--decoder-key", "--vending-key"):
        refused = sts_token(*CREDIT, option, "e653341f9d5bf36f")
        assert refused.returncode == 2 and refused.stdout == ""
        assert f"{option}-file" in refused.stderr and "process list" in refused.stderr
        assert "e653341f" not in refused.stderr
        joined = sts_token(*CREDIT, f"{option}=e653341f9d5bf36f")
        assert joined.returncode == 2 and "e653341f" not in joined.stderr
    new = sts_token("issue", "key-change", "--new-vending-key", "0123456789abcdef")
    assert new.returncode == 2 and "--new-vending-key-file" in new.stderr
    assert "0123456789abcdef" not in new.stderr


def test_unreadable_key_sources_are_clear_errors(tmp_path: Path) -> None:
    missing = sts_token(*CREDIT, "--decoder-key-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "bad_key_input" in missing.stderr
    assert "No such file" in missing.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert (
        "does not hold one decoder key"
        in sts_token(*CREDIT, "--decoder-key-file", str(empty)).stderr
    )
    two = sts_token(
        "issue", "key-change", "--dkga", "02", "--vending-key-file", "-",
        "--new-vending-key-file", "-", stdin="ab" * 8,
    )  # fmt: skip
    assert two.returncode == 2 and "only one key can be read from stdin" in two.stderr
    bad_hex = tmp_path / "bad"
    bad_hex.write_text("e653341f9d5bf36z")
    wrong = sts_token(*CREDIT, "--decoder-key-file", str(bad_hex))
    assert wrong.returncode == 1 and "invalid_key_parameter" in wrong.stderr
    assert "e653341f" not in wrong.stderr
