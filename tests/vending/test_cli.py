"""``gateway tariffs load`` and ``gateway vendors top-up|statement`` as an operator runs them."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from tests.vending.conftest import Vend

BIN = Path(sys.executable).parent

YAML = """\
tariffs:
  - utility: electricity
    customer_class: business
    effective_from: 2025-07-01
    name: Business 2025/26
    fixed_monthly: "250.00"
    blocks:
      - {from: 0, to: 500, rate: "2.8000"}
      - {from: 500, to: null, rate: "3.1000"}
"""

CSV = """\
utility,customer_class,effective_from,name,vat_rate,fixed_monthly,block_from,block_to,rate
water,business,2025-07-01,Water business,0.15,0,0,6,18.50
water,business,2025-07-01,Water business,0.15,0,6,,27.00
"""


def gateway(
    database_url: str, *args: str, settings: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_DATABASE_URL"] = database_url
    env["GATEWAY_LOG_FORMAT"] = "text"
    env.update(settings or {})
    return subprocess.run(
        [str(BIN / "gateway"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_tariff_files_load_once_and_show_in_the_api(vend: Vend, tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(YAML)
    (tmp_path / "w.csv").write_text(CSV)
    result = gateway(vend.database_url, "tariffs", "load", str(tmp_path / "t.yaml"))
    assert result.returncode == 0, result.stderr
    assert "1 added" in result.stdout
    result = gateway(vend.database_url, "tariffs", "load", str(tmp_path / "w.csv"))
    assert result.returncode == 0, result.stderr
    again = gateway(vend.database_url, "tariffs", "load", str(tmp_path / "t.yaml"))
    assert "0 added, 1 already loaded" in again.stdout
    (tmp_path / "changed.yaml").write_text(YAML.replace("3.1000", "3.2000"))
    changed = gateway(vend.database_url, "tariffs", "load", str(tmp_path / "changed.yaml"))
    assert changed.returncode == 1
    assert "never changed" in changed.stderr
    listed = await vend.client.get("/tariffs", headers=vend.operator)
    by_key = {(t["utility"], t["customer_class"]): t for t in listed.json()}
    business = by_key[("electricity", "business")]
    assert business["fixed_monthly"] == "250.00"
    assert business["blocks"] == [
        {"from": "0", "to": "500", "rate": "2.8"},
        {"from": "500", "to": None, "rate": "3.1"},
    ]
    assert by_key[("water", "business")]["blocks"][1] == {"from": "6", "to": None, "rate": "27"}
    bad = gateway(vend.database_url, "tariffs", "load", str(tmp_path / "missing.yaml"))
    assert bad.returncode == 1 and "cannot read" in bad.stderr


async def test_top_up_and_daily_statement_reconcile(vend: Vend, tmp_path: Path) -> None:
    vendor = await vend.vendor(None)
    name = await vend.vendor_name(vendor)
    result = gateway(vend.database_url, "vendors", "top-up", name, "500.00", "--note", "EFT 77")
    assert result.returncode == 0, result.stderr
    assert "500.00" in result.stdout
    refused = gateway(vend.database_url, "vendors", "top-up", name, "-5")
    assert refused.returncode == 1
    meter = await vend.meter()
    sale = (await vend.credit(vendor, meter, "40.00")).json()
    await vend.client.post(
        "/vend/v1/reverse",
        json={"request_id": "rv", "receipt_no": sale["receipt_no"]},
        headers=vendor,
    )
    await vend.credit(vendor, meter, "25.00")
    today = datetime.now(UTC).astimezone(vend.service.config.zone).date().isoformat()
    out = tmp_path / "statement.csv"
    result = gateway(
        vend.database_url, "vendors", "statement", name, "--date", today, "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    movements = [r for r in rows if r["line"].isdigit()]
    assert [r["kind"] for r in movements] == ["top_up", "sale", "reversal", "sale"]
    opening = Decimal(rows[0]["balance"])
    closing = Decimal(rows[-1]["balance"])
    assert opening + sum(Decimal(r["amount"]) for r in movements) == closing == Decimal("475.00")
    totals = {r["kind"]: Decimal(r["amount"]) for r in rows if r["line"] == "total"}
    assert totals == {
        "top_up": Decimal("500.00"),
        "sale": Decimal("-65.00"),
        "reversal": Decimal("40.00"),
        "claim": Decimal("0.00"),
    }
    assert movements[1]["receipt_no"] == sale["receipt_no"]


async def test_statement_days_follow_the_configured_vending_time_zone(vend: Vend) -> None:
    def opening(zone: str | None) -> str:
        settings = None if zone is None else {"GATEWAY_VENDING_TIME_ZONE": zone}
        result = gateway(
            vend.database_url,
            "vendors",
            "statement",
            "any-vendor",
            "--date",
            "2025-01-02",
            settings=settings,
        )
        assert result.returncode == 0, result.stderr
        first = next(csv.DictReader(io.StringIO(result.stdout)))
        assert first["line"] == "opening"
        return first["time"]

    assert opening(None).startswith("2025-01-01T22:00:00")  # Africa/Johannesburg, UTC+2
    assert opening("Pacific/Kiritimati").startswith("2025-01-01T10:00:00")  # UTC+14
    assert opening("UTC").startswith("2025-01-02T00:00:00")
