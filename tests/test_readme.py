"""The README stays true: every setting is documented, and the two set-up commands are there."""

from __future__ import annotations

from pathlib import Path

from gateway.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [
        f"GATEWAY_{name.upper()}"
        for name in Settings.model_fields
        if f"| `GATEWAY_{name.upper()}` |" not in README
    ]
    assert missing == []


def test_quick_start_gives_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "make run" in README and "make test" in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci
