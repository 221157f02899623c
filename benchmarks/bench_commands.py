"""Commands to meters at fleet scale: ordered in bulk, signed, published and confirmed by the
running gateway, beside the raw MQTT publish rate and the key store's signing rate.

Run:  .venv/bin/python -m benchmarks.bench_commands [--meters 10000] [--per-connection 100]
          [--silent K] [--compare-tree DIR] [--rounds R]

Each run starts from a copy of one prepared database (the meters registered, each with the
command key the gateway's key store generated and its provisioning file) and a private
Mosquitto of its own, and measures, in this order:

1. **signing alone**: ``SoftwareKeyStore.sign_command`` for every meter, one after another on
   one connection (read the sealed key, unwrap it, HMAC) — the key store's share of the work.
2. **raw MQTT**: QoS 1 publishes of payloads the size of a signed command to the same
   ``meters/{id}/commands`` topics with the gateway's own MQTT client (``gateway.mqtt``), as
   many in flight as the command loop allows (``LoopOptions.publish_concurrency``), each
   awaited to its PUBACK — the run's baseline. It runs before the fleet connects, so the broker
   has no subscriber to deliver to (nothing acts on these bytes).
3. **the product path**: a simulated fleet (:mod:`benchmarks.command_fleet`: all electricity
   meters, post-paid, on the wall clock, ``--per-connection`` meters per data-concentrator
   link, each verifying with its provisioned command key) in a process of its own, and the
   real service (``python -m gateway run``: MQTT intake, ingest, command loop) in another.
   Once every meter has reported its status, one ``disconnect`` per meter is ordered with
   :func:`gateway.control.commands.order_command` (``--order-chunk`` a transaction) while the
   gateway runs; the run ends when no command is live. Reported: commands ordered, signed and
   published, and confirmed per second from the start of ordering (and signed+published from
   the gateway's first signed message), order-to-confirmed latency p50 / p95 / p99 and the
   medians of its parts (ordered → signed, signed → the meter's reply stored, reply stored →
   confirmed), the CPU seconds of the gateway, of the database server processes serving it, of
   the broker and of the fleet, commands by state and messages by action (``read_state``
   probes would show confirmations that came late).

Every command must end ``confirmed`` (checked for this tree's runs). ``--silent K`` makes the
first K meters ignore commands, as meters off the network do: the run then ends when every
other command is confirmed, and the silent meters' commands are still ``sent``.

Ordering runs while the gateway works, so with few meters the rates are ordering's. ``--hold
S`` orders every command to go S seconds after ordering starts (``not_before``, as a scheduled
command), so that the gateway finds them all at once: the rates and latencies are then counted
from that instant (``last ordered`` must be below S).

``--compare-tree DIR`` runs another build's gateway the same way, for before/after figures
from one run on one machine: DIR is a source tree (e.g. ``git archive <commit> | tar -x -C
DIR``) run from this virtualenv. ``--rounds R`` repeats the runs, builds alternating in order.
A run of the other build that does not finish within ``--timeout`` is reported as it stood.

The commands are manual (``origin='manual'``, not windowed): the execution window and
``commands_per_minute`` of the credit-control policy apply to credit-control orders only and
play no part here. The policy in force is the default (confirmation time 300 s). The meters
send readings in batches of 96 intervals (once a day), so the ingest load of the run is the
commands' own: each meter answers with a reply and a retained status.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.bench_ingest import drop_database, fresh_database, mqtt_client
from benchmarks.command_fleet import identities
from benchmarks.processes import (
    TREE,
    Processes,
    backends_cpu,
    cpu_seconds,
    start_fleet,
    start_gateway,
    used_since,
)
from gateway.control.commands import order_command
from gateway.control.dispatch import LoopOptions
from gateway.dev.services import (
    LOCAL_PG_ADMIN,
    MosquittoProcess,
    create_database,
    free_port,
    with_database,
)
from gateway.keystore import SoftwareKeyStore
from gateway.keystore.envelope import Keyring, new_master_key, write_keyring
from gateway.keystore.provisioning import export_provisioning
from protocols.commands import CommandAction
from protocols.topics import Topics

TOPICS = Topics("")
LIVE = ["planned", "sent", "acknowledged", "expired"]


# ------------------------------------------------------------------ set-up and baselines


@dataclass(frozen=True, slots=True)
class Prepared:
    template: str
    """Database with the meters registered and their command keys, copied for each run."""
    master_key: Path
    provisioning: Path
    ids: list[str]


async def prepare(args: argparse.Namespace, work: Path) -> Prepared:
    url = fresh_database()
    master = work / "master.key"
    write_keyring(master, Keyring((new_master_key(),)))
    provisioning = work / "provisioning"
    ids = [i.meter_id for i in identities(args.seed, args.meters)]
    async with await psycopg.AsyncConnection.connect(url) as conn:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO meters (meter_id, utility, payment, verified, reporting_interval_s)"
                " VALUES (%s, 'electricity', 'postpaid', true, 900)",
                [(m,) for m in ids],
            )
        await export_provisioning(conn, SoftwareKeyStore(master), provisioning, ids)
        await conn.commit()
    return Prepared(url.rsplit("/", 1)[1], master, provisioning, ids)


async def signing_alone(url: str, keystore: SoftwareKeyStore, ids: list[str]) -> tuple[float, int]:
    """sign_command per second over every meter, and the size of a signed command."""
    issued = datetime.now(UTC).replace(microsecond=0)
    size = 0
    async with await psycopg.AsyncConnection.connect(url) as conn:
        started = time.perf_counter()
        for meter_id in ids:
            command = await keystore.sign_command(
                conn, meter_id=meter_id, command_id=uuid.uuid4().hex,
                action=CommandAction.DISCONNECT, issued_at=issued, ttl=timedelta(minutes=10),
                nonce=os.urandom(16).hex(),
            )  # fmt: skip
            size = max(size, len(command.to_json()))
        elapsed = time.perf_counter() - started
    return len(ids) / elapsed, size


async def raw_publish(port: int, ids: list[str], size: int) -> float:
    """QoS 1 publishes/s to every command topic, as many in flight as the command loop."""
    client = mqtt_client(port, f"bench-raw-{uuid.uuid4().hex[:8]}")
    task = asyncio.create_task(client.run())
    await client.connected.wait()
    payload = b"x" * size
    gate = asyncio.Semaphore(LoopOptions().publish_concurrency)

    async def one(meter_id: str) -> None:
        async with gate:
            await client.publish(TOPICS.commands(meter_id), payload)

    started = time.perf_counter()
    await asyncio.gather(*(one(m) for m in ids))
    elapsed = time.perf_counter() - started
    await client.close()
    await task
    return len(ids) / elapsed


# ------------------------------------------------------------------ the product path


async def scalar(conn: psycopg.AsyncConnection[Any], sql: str, *args: Any) -> Any:
    cur = await conn.execute(sql, args)  # type: ignore[arg-type]
    row = await cur.fetchone()
    await conn.commit()
    return row[0] if row else None


async def wait_online(url: str, count: int, limit_s: float, procs: Processes) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        deadline = time.monotonic() + limit_s
        while True:
            online = await scalar(
                conn, "SELECT count(*) FROM meters WHERE online AND status_received_at IS NOT NULL"
            )
            if online >= count:
                return
            procs.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {online} of {count} meters online after {limit_s} s")
            await asyncio.sleep(0.5)


async def order_all(
    url: str, ids: list[str], chunk: int, hold_s: float | None
) -> tuple[datetime, float]:
    """One disconnect per meter, ``chunk`` a transaction, not before ``hold_s`` from now (if
    given); (the DB time at the start, or the time they may go, and the seconds it took)."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        t0 = await scalar(conn, "SELECT clock_timestamp()")
        release = t0 + timedelta(seconds=hold_s) if hold_s is not None else None
        started = time.perf_counter()
        for first in range(0, len(ids), chunk):
            async with conn.transaction():
                for meter_id in ids[first : first + chunk]:
                    await order_command(
                        conn, meter_id=meter_id, action=CommandAction.DISCONNECT,
                        origin="manual", requested_by="bench", reason="benchmark",
                        not_before=release,
                    )  # fmt: skip
        return release or t0, time.perf_counter() - started


async def wait_settled(url: str, answering: list[str], limit_s: float, procs: Processes) -> bool:
    """Until no command to an answering meter is live; False if ``limit_s`` passed first."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        deadline = time.monotonic() + limit_s
        shown = time.monotonic()
        while True:
            live = await scalar(
                conn,
                "SELECT count(*) FROM meter_commands WHERE state = ANY(%s) AND meter_id = ANY(%s)",
                LIVE,
                answering,
            )
            if live == 0:
                return True
            if time.monotonic() - shown > 10:
                shown = time.monotonic()
                print(f"  … {live} live", file=sys.stderr, flush=True)
            procs.check()
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)


async def outcome(url: str, t0: datetime, answering: list[str]) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT state, count(*) FROM meter_commands GROUP BY 1 ORDER BY 1")
        states = {str(s): int(n) for s, n in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT action, count(*) FROM command_messages GROUP BY 1 ORDER BY 1"
        )
        actions = {str(a): int(n) for a, n in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT extract(epoch FROM confirmed_at - greatest(created_at, not_before)),"
            " extract(epoch FROM confirmed_at - %s) FROM meter_commands"
            " WHERE state = 'confirmed' AND meter_id = ANY(%s)",
            (t0, answering),
        )
        confirmed = [(float(a), float(b)) for a, b in await cur.fetchall()]
        cur = await conn.execute(
            "SELECT extract(epoch FROM min(created_at) - %s),"
            " extract(epoch FROM max(published_at) - %s),"
            " count(*) FILTER (WHERE published_at IS NOT NULL)"
            " FROM command_messages WHERE meter_id = ANY(%s)",
            (t0, t0, answering),
        )
        row = await cur.fetchone()
        # Where a confirmed command's time went (medians): waiting to be signed; published,
        # carried out and its reply stored; then confirmed from the meter's state.
        cur = await conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP"
            " (ORDER BY m.created_at - greatest(c.created_at, c.not_before)),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY r.received_at - m.created_at),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY c.confirmed_at - r.received_at)"
            " FROM meter_commands c JOIN command_messages m USING (command_id)"
            " JOIN command_replies r ON r.message_id = m.message_id AND r.meter_id = m.meter_id"
            " WHERE c.state = 'confirmed' AND m.action = c.action"
        )
        segments = await cur.fetchone()
    assert row is not None and segments is not None
    return {
        "states": states,
        "actions": actions,
        "segments": [s.total_seconds() if s is not None else float("nan") for s in segments],
        "latencies": sorted(a for a, _ in confirmed),
        "last_confirmed": max((b for _, b in confirmed), default=float("nan")),
        "first_signed": float(row[0]) if row[0] is not None else float("nan"),
        "last_published": float(row[1]) if row[1] is not None else float("nan"),
        "published": int(row[2]),
    }


async def one_run(
    args: argparse.Namespace, prepared: Prepared, build: str, tree: Path, work: Path
) -> dict[str, Any]:
    name = f"gw_bench_cmd_{uuid.uuid4().hex[:8]}"
    create_database(LOCAL_PG_ADMIN, name, template=prepared.template)
    url = with_database(LOCAL_PG_ADMIN, name)
    broker = MosquittoProcess(free_port(), work / f"mqtt-{name}", autosave_interval_s=1800)
    broker.start()
    procs = Processes()
    ids = prepared.ids
    answering = ids[args.silent :]
    run: dict[str, Any] = {"build": build, "load_before": os.getloadavg()[0]}
    try:
        run["sign"], size = await signing_alone(url, SoftwareKeyStore(prepared.master_key), ids)
        run["raw"] = await raw_publish(broker.port, ids, size)
        procs.fleet = start_fleet(args, broker.port, prepared.provisioning, work / "fleet.log")
        gateway_log = work / f"gateway-{build}.log"
        procs.gateway = start_gateway(tree, url, broker.port, prepared.master_key, gateway_log)
        await wait_online(url, len(ids), args.timeout, procs)
        assert broker.process is not None
        pids = (procs.gateway.pid, procs.fleet.pid, broker.process.pid)
        cpu0, db0 = [cpu_seconds(p) for p in pids], await backends_cpu(url)
        wall0 = time.perf_counter()
        t0, run["order_s"] = await order_all(url, ids, args.order_chunk, args.hold)
        run["finished"] = await wait_settled(url, answering, args.timeout, procs)
        run["wall"] = time.perf_counter() - wall0
        run["db_cpu"] = used_since(db0, await backends_cpu(url))
        run["cpu"] = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        run |= await outcome(url, t0, answering)
        run["load_after"] = os.getloadavg()[0]
    finally:
        procs.stop()
        broker.stop()
        drop_database(url)
    return run


# ------------------------------------------------------------------ report


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    n = args.meters - args.silent
    since = f"the release {args.hold:g} s after" if args.hold is not None else "the start of"
    print(
        f"\n{args.meters} meters ({args.silent} silent), {args.per_connection} a connection,"
        f" 1 disconnect each; rates over the {n} answering meters' commands, counted from"
        f" {since} ordering"
    )
    rows: list[tuple[str, Any]] = [
        ("raw MQTT QoS 1 publishes/s (baseline)", lambda r: f"{r['raw']:.0f}"),
        ("key store sign_command/s", lambda r: f"{r['sign']:.0f}"),
        ("ordered/s (order_command)", lambda r: f"{args.meters / r['order_s']:.0f}"),
        ("signed+published/s, end to end", lambda r: f"{n / r['last_published']:.0f}"),
        ("  ÷ raw", lambda r: f"{n / r['last_published'] / r['raw']:.3f}"),
        (
            "signed+published/s, gateway window",
            lambda r: f"{n / (r['last_published'] - r['first_signed']):.0f}",
        ),
        ("confirmed/s, end to end", lambda r: f"{n / r['last_confirmed']:.0f}"),
        ("  ÷ raw", lambda r: f"{n / r['last_confirmed'] / r['raw']:.3f}"),
        ("order→confirmed p50 s", lambda r: f"{pct(r['latencies'], 50):.2f}"),
        ("order→confirmed p95 s", lambda r: f"{pct(r['latencies'], 95):.2f}"),
        ("order→confirmed p99 s", lambda r: f"{pct(r['latencies'], 99):.2f}"),
        (
            "p50 s: to signed / to reply / to confirmed",
            lambda r: "/".join(f"{v:.1f}" for v in r["segments"]),
        ),
        (
            "ordering took / last confirmed at s",
            lambda r: f"{r['order_s']:.0f}/{r['last_confirmed']:.0f}",
        ),
        ("confirmed (answering meters)", lambda r: f"{len(r['latencies'])}/{n}"),
        ("finished within --timeout", lambda r: "yes" if r["finished"] else "NO"),
        ("wall s", lambda r: f"{r['wall']:.1f}"),
        ("CPU s: gateway / its DB backends", lambda r: f"{r['cpu'][0]:.1f}/{r['db_cpu']:.1f}"),
        ("CPU s: broker / fleet", lambda r: f"{r['cpu'][2]:.1f}/{r['cpu'][1]:.1f}"),
        (
            "load average 1 min before/after",
            lambda r: f"{r['load_before']:.1f}/{r['load_after']:.1f}",
        ),
    ]
    heads = [f"{r['build']}#{[x['build'] for x in runs[: i + 1]].count(r['build'])}"
             for i, r in enumerate(runs)]  # fmt: skip
    print(f"{'':<40}" + "".join(f"{h:>14}" for h in heads))
    for label, cell in rows:
        print(f"{label:<40}" + "".join(f"{cell(r):>14}" for r in runs))
    for head, r in zip(heads, runs, strict=True):
        print(f"{head}: commands by state {r['states']}; messages by action {r['actions']}")


async def bench(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-commands-"))
    print(f"logs in {work}", file=sys.stderr)
    builds = [("this", TREE)]
    if args.compare_tree is not None:
        builds.append((args.compare_label, args.compare_tree.resolve()))
    started = time.perf_counter()
    prepared = await prepare(args, work)
    print(
        f"prepared {args.meters} meters in {time.perf_counter() - started:.0f} s", file=sys.stderr
    )
    runs = []
    try:
        for round_no in range(args.rounds):
            order = builds if round_no % 2 == 0 else builds[::-1]
            for build, tree in order:
                print(f"run {round_no + 1}: {build}", file=sys.stderr, flush=True)
                runs.append(await one_run(args, prepared, build, tree, work))
    finally:
        drop_database(with_database(LOCAL_PG_ADMIN, prepared.template))
        # The logs stay; the throw-away keys do not.
        prepared.master_key.unlink()
        shutil.rmtree(prepared.provisioning)
    report(args, runs)
    n = args.meters - args.silent
    for r in runs:
        assert args.hold is None or r["order_s"] < args.hold, "ordering outlasted --hold"
        if r["build"] == "this":
            assert r["states"].get("confirmed") == n, f"not every command confirmed: {r['states']}"
            assert r["states"].get("sent", 0) == args.silent, r["states"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--per-connection", type=int, default=100)
    parser.add_argument("--order-chunk", type=int, default=100, help="commands a transaction")
    parser.add_argument(
        "--hold", type=float, help="order every command to go this many seconds from the start"
    )
    parser.add_argument("--silent", type=int, default=0, help="meters that ignore commands")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per phase")
    parser.add_argument("--compare-tree", type=Path, help="another build's source tree")
    parser.add_argument("--compare-label", default="other")
    parser.add_argument("--rounds", type=int, default=1)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
