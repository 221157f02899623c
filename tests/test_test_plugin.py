"""The test plugin's own policy: CI strictness, variant selection, a self-contained repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.plugins.services import PLAIN, TIMESCALE, selected_variants, unavailable

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_a_missing_service_fails_in_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="no broker"):
        unavailable("no broker")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_a_missing_service_skips_outside_ci(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="no broker"):
        unavailable("no broker")


@pytest.mark.parametrize(
    ("mode", "variants"),
    [("auto", [PLAIN, TIMESCALE]), ("on", [TIMESCALE]), ("off", [PLAIN]), ("", [PLAIN, TIMESCALE])],
)
def test_variants_follow_gateway_timescaledb(
    monkeypatch: pytest.MonkeyPatch, mode: str, variants: list[str]
) -> None:
    monkeypatch.setenv("GATEWAY_TIMESCALEDB", mode)
    assert selected_variants() == variants


def test_no_file_refers_outside_the_repository() -> None:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    outside = re.compile(r"\.\./shared|shared/(data|docs|tools)")
    offenders = [
        name
        for name in files
        if (ROOT / name).is_file()
        and outside.search((ROOT / name).read_text(encoding="utf-8", errors="replace"))
    ]
    assert offenders == []
