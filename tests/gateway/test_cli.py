"""The ``gateway`` command as an operator runs it (real processes, real services)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway.dev.services import free_port

BIN = Path(sys.executable).parent


def env_with(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(values)
    return env


def test_invalid_settings_stop_the_command_with_every_problem(tmp_path: Path) -> None:
    result = subprocess.run(
        [BIN / "gateway", "migrate"],
        env=env_with(
            GATEWAY_DATABASE_URL="postgresql://u:hunter2@127.0.0.1:1/x",
            GATEWAY_MQTT_URL="ftp://nowhere",
            GATEWAY_BATCH_MAX_ROWS="0",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "GATEWAY_MQTT_URL" in result.stderr and "GATEWAY_BATCH_MAX_ROWS" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_python_m_gateway_prints_redacted_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "settings"],
        env=env_with(GATEWAY_DATABASE_URL="postgresql://u:hunter2@db/x"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown = json.loads(result.stdout)
    assert shown["database_url"] == "postgresql://u:***@db/x"


def test_run_serves_and_stops_cleanly_on_sigterm(
    database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [BIN / "gateway", "run", "--migrate"],
        env=env_with(
            GATEWAY_DATABASE_URL=database_url,
            GATEWAY_MQTT_URL=mqtt_url,
            GATEWAY_MQTT_TOPIC_PREFIX=topic_prefix,
            GATEWAY_MQTT_CLIENT_ID=f"cli-{topic_prefix[:-1]}",
            GATEWAY_HTTP_PORT=str(port),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert ready is not None and ready.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(entry["msg"] == "gateway stopped" for entry in lines)
    assert not any(entry["level"] == "error" for entry in lines)


def _run_with_port_taken(command: list[str], **env: str) -> tuple[int, str, int]:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            command,
            env=env_with(GATEWAY_HTTP_HOST="127.0.0.1", GATEWAY_HTTP_PORT=str(port), **env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    return result.returncode, result.stdout + result.stderr, port


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if '"level": "error"' in line]


def test_run_with_the_http_port_in_use_says_so_in_one_line(
    database_url: str, mqtt_url: str, topic_prefix: str
) -> None:
    code, output, port = _run_with_port_taken(
        [str(BIN / "gateway"), "run"],
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_MQTT_URL=mqtt_url,
        GATEWAY_MQTT_TOPIC_PREFIX=topic_prefix,
        GATEWAY_MQTT_CLIENT_ID=f"cli-{topic_prefix[:-1]}",
    )
    assert code == 1, output
    assert "Traceback" not in output
    errors = _error_lines(output)
    assert len(errors) == 1, output
    message = json.loads(errors[0])["msg"]
    assert f"port {port}" in message and "GATEWAY_HTTP_PORT" in message


def test_demo_with_the_http_port_in_use_says_so_in_one_line(
    database_url: str, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    code, output, port = _run_with_port_taken(
        [str(BIN / "gateway"), "demo", "--meters", "2"],
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_MQTT_URL=mqtt_url,
        GATEWAY_MQTT_TOPIC_PREFIX=topic_prefix,
        GATEWAY_MQTT_CLIENT_ID=f"demo-{topic_prefix[:-1]}",
        GATEWAY_DATA_DIR=str(tmp_path),
    )
    assert code == 1, output
    assert "Traceback" not in output
    errors = _error_lines(output)
    assert len(errors) == 1, output
    message = json.loads(errors[0])["msg"]
    assert f"port {port}" in message and "GATEWAY_HTTP_PORT=0" in message
