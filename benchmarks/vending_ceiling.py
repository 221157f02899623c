"""The database's own ceiling for a credit vend: one sale's SQL through ``pgbench``.

The script sends, in one transaction, the statements the gateway sends for a sale of 20.00 to
a meter without a key change or free units (gateway.vending: the idempotency insert with its
lock timeouts, the meter's lock, the sale's context, the TID allocation, the float's lock and
balance, the sale with its token and float movement, the audit record, the stored response) on
prepared statements from a C client: what PostgreSQL sustains for that work on this machine,
with no Python, HTTP or token cryptography in the way. It also looks the meter number up (one
indexed read the gateway does not make) and leaves out the API-key check.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

__all__ = ["pgbench_ceiling", "prepare_ceiling"]

_SCRIPT = r"""
\set m random(1, {meters})
\set v random(0, {vendors_last})
\set r random(1, 1000000000000)
SELECT meter_id AS mid, 'v' || :v AS vendor, 'pg-' || :client_id || '-' || :r AS rid
  FROM bench_meter WHERE n = :m \gset
BEGIN;
INSERT INTO vend_requests (vendor, request_id, operation, body_hash, status, response)
  SELECT :vendor, :rid, 'credit', '\x00'::bytea, 0, ''
  WHERE set_config('lock_timeout', '5000ms', true) IS NOT NULL
  ON CONFLICT DO NOTHING RETURNING set_config('lock_timeout', '30000ms', true);
SELECT m.utility, m.payment, v.sgc, v.krn, v.ti, v.key_type, v.base_date, v.ea, v.dkga,
  v.target_sgc, v.target_ti, v.blocked_reason, a.account_id, a.customer_class,
  a.indigent_from, a.indigent_to, a.arrears, a.debt_recovery_share
  FROM meter_vending v JOIN meters m USING (meter_id) LEFT JOIN accounts a USING (account_id)
  WHERE v.meter_id = :mid FOR UPDATE OF v;
SELECT t.tariff_id, t.blocks, md.units, md.fixed, fb.issued, g.sgc
  FROM meters m LEFT JOIN meter_vending v ON v.meter_id = m.meter_id
  LEFT JOIN accounts a ON a.account_id = v.account_id
  LEFT JOIN LATERAL (SELECT tariff_id, blocks FROM tariffs WHERE utility = m.utility
    AND customer_class = coalesce(a.customer_class, 'domestic')
    AND effective_from <= current_date ORDER BY effective_from DESC LIMIT 1) t ON true
  CROSS JOIN LATERAL (SELECT coalesce(sum(units_tenths), 0) AS units,
    coalesce(sum(fixed), 0) AS fixed FROM sales WHERE meter_id = m.meter_id
    AND month = date_trunc('month', current_date)::date AND kind = 'sale'
    AND state <> 'reversed') md
  CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM vend_tokens WHERE meter_id = m.meter_id
    AND fbe_month = date_trunc('month', current_date)::date) AS issued) fb
  LEFT JOIN supply_groups g ON g.sgc = coalesce(v.target_sgc, v.sgc)
  WHERE m.meter_id = :mid;
INSERT INTO meter_tids (meter_id, base_date, last_tid) VALUES (:mid, 2014, 6000000)
  ON CONFLICT (meter_id, base_date) DO UPDATE
  SET last_tid = greatest(meter_tids.last_tid + 1, excluded.last_tid) RETURNING last_tid;
SELECT nextval(pg_get_serial_sequence('sales', 'sale_id')) AS sid FROM vendors
  WHERE vendor = :vendor FOR UPDATE \gset
SELECT balance_after AS bal FROM float_movements WHERE vendor = :vendor
  ORDER BY movement_id DESC LIMIT 1 \gset
WITH sale AS (INSERT INTO sales (sale_id, receipt_no, vendor, request_id, kind, meter_id,
    account_id, utility, tariff_id, month, amount, vat, fixed, debt_recovered, units_tenths,
    free_tenths, issued_at) VALUES (:sid, 'PG' || :sid, :vendor, :rid, 'sale', :mid, NULL,
    'electricity', NULL, date_trunc('month', current_date)::date, 20.00, 2.61, 0, 0, 86, 0,
    now())),
  tokens AS (INSERT INTO vend_tokens (sale_id, seq, meter_id, kind, token, tenths, tid,
    fbe_month, new_key) SELECT :sid, t.seq, :mid, t.kind, t.token, t.tenths, t.tid, NULL, NULL
    FROM unnest(ARRAY['credit'], ARRAY['12873408712334560921'], ARRAY[86], ARRAY[6000000])
    WITH ORDINALITY AS t(kind, token, tenths, tid, seq)),
  movement AS (INSERT INTO float_movements (vendor, kind, amount, balance_after, sale_id, note)
    VALUES (:vendor, 'sale', -20.00, :bal - 20.00, :sid, 'PG' || :sid))
  UPDATE accounts SET arrears = arrears - 0, updated_at = now()
  WHERE account_id = NULL AND 0 > 0;
INSERT INTO audit_log (actor, action, object, outcome, source, request_id, detail)
  VALUES (:vendor, 'vend.credit', 'meter:' || :mid, 'issued', '127.0.0.1', :rid,
  '{{"receipt_no": "202612010000000042", "amount": "20.00", "tokens": ["credit"]}}');
UPDATE vend_requests SET status = 200, response = convert_to(repeat('r', 640), 'UTF8')
  WHERE vendor = :vendor AND request_id = :rid;
COMMIT;
"""


def prepare_ceiling(database_url: str, meters: list[str]) -> None:
    """The meter numbers by position, for the script to pick one at random."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_meter (n int PRIMARY KEY, meter_id text)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO bench_meter VALUES (%s, %s) ON CONFLICT DO NOTHING",
                list(enumerate(meters, start=1)),
            )


def pgbench_ceiling(
    database_url: str, meters: int, vendors: int, *, clients: int, seconds: int
) -> dict[str, float]:
    """Sales per second of the sale's SQL alone, ``clients`` connections, ``seconds`` long."""
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        raise SystemExit("pgbench is needed (postgresql-client)")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "sale.sql"
        script.write_text(_SCRIPT.format(meters=meters, vendors_last=vendors - 1))
        result = subprocess.run(
            [pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(seconds),
             "-r", "-f", str(script), database_url],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", result.stdout)
    latency = re.search(r"latency average = ([0-9.]+) ms", result.stdout)
    failed = re.search(r"number of failed transactions: ([0-9]+)", result.stdout)
    if tps is None:
        raise RuntimeError(f"pgbench said: {result.stdout[-2000:]} {result.stderr[-2000:]}")
    return {
        "sales_per_s": float(tps.group(1)),
        "latency_avg_ms": float(latency.group(1)) if latency else float("nan"),
        "failed": float(failed.group(1)) if failed else 0.0,
    }
