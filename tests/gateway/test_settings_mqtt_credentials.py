"""MQTT URL user and password are percent-decoded: a password with ``@``, ``:`` or ``/`` works;
``gateway demo`` hands the simulator its broker password through the environment."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from firmware_sim.mqtt_link import BROKER_PASSWORD_ENV, BrokerAddress, parse_broker_url
from gateway.dev.demo import _broker_for_fleet, _fleet_command
from gateway.dev.services import free_port, port_answers
from gateway.settings import Settings, redact_url
from tests.plugins.gateway import gateway_running, make_settings

USER = "gw@site-a"  # Mosquitto refuses ":" in user names
PASSWORD = "p@ss:w/rd%41?#x"  # every character that is special in a URL's user-info
ENCODED = f"{quote(USER, safe='')}:{quote(PASSWORD, safe='')}"


def test_user_and_password_are_percent_decoded() -> None:
    settings = Settings(mqtt_url=f"mqtt://{ENCODED}@broker.example:1884")  # type: ignore[arg-type]
    assert settings.mqtt_credentials == (USER, PASSWORD)
    assert (settings.mqtt_host, settings.mqtt_port) == ("broker.example", 1884)
    shown = settings.describe()["mqtt_url"]
    assert quote(PASSWORD, safe="") not in str(shown) and "***" in str(shown)
    assert redact_url(f"mqtt://{ENCODED}@h") == f"mqtt://{quote(USER, safe='')}:***@h"


def test_plain_credentials_and_no_credentials() -> None:
    plain = Settings(mqtt_url="mqtt://gateway:secret@h")  # type: ignore[arg-type]
    assert plain.mqtt_credentials == ("gateway", "secret")
    user_only = Settings(mqtt_url="mqtt://gateway@h")  # type: ignore[arg-type]
    assert user_only.mqtt_credentials == ("gateway", None)
    assert Settings(mqtt_url="mqtt://h").mqtt_credentials is None  # type: ignore[arg-type]


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[str]:
    """A private Mosquitto that admits only USER with PASSWORD; yields its host:port."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    passwd_tool = shutil.which("mosquitto_passwd")
    if not Path(binary).exists() or passwd_tool is None:
        pytest.skip("mosquitto and mosquitto_passwd are needed")
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    subprocess.run([passwd_tool, "-b", str(passwd), USER, PASSWORD], check=True)  # test secret
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        f"log_dest file {tmp_path}/mosquitto.log\n"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(200):
            if port_answers("127.0.0.1", port, timeout=0.2) or proc.poll() is not None:
                break
        if proc.poll() is not None:
            pytest.fail(f"mosquitto did not start: {(tmp_path / 'mosquitto.log').read_text()}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_gateway_logs_in_with_a_password_holding_url_delimiters(
    password_broker: str, database_url: str, topic_prefix: str
) -> None:
    settings = make_settings(database_url, f"mqtt://{ENCODED}@{password_broker}", topic_prefix)
    async with gateway_running(settings) as handle:  # starts only once subscribed
        assert handle.services.mqtt.connected.is_set()


def test_demo_hands_the_fleet_its_broker_password_through_the_environment(
    tmp_path: Path,
) -> None:
    settings = Settings(mqtt_url=f"mqtt://{ENCODED}@127.0.0.1:1883")  # type: ignore[arg-type]
    command = _fleet_command(
        settings, meters=3, speed=1.0, seed=1, modbus_port=1502, data_dir=tmp_path
    )
    argv = " ".join(command)
    assert quote(PASSWORD, safe="") not in argv and PASSWORD not in argv
    assert f"mqtt://{quote(USER, safe='')}@127.0.0.1:1883" in command
    url, env = _broker_for_fleet(settings)
    assert env[BROKER_PASSWORD_ENV] == PASSWORD
    assert parse_broker_url(url, env) == BrokerAddress("127.0.0.1", 1883, USER, PASSWORD)
    anonymous = Settings(mqtt_url="mqtt://127.0.0.1:1883")  # type: ignore[arg-type]
    url, env = _broker_for_fleet(anonymous)
    assert url == "mqtt://127.0.0.1:1883" and BROKER_PASSWORD_ENV not in env


def test_simulator_logs_in_with_the_password_from_its_environment(password_broker: str) -> None:
    binary = Path(sys.executable).with_name("firmware-sim")
    command = [str(binary)] if binary.exists() else [sys.executable, "-m", "firmware_sim.cli"]
    args = ["load", "--meters", "2", "--readings", "4", "--batch", "4"]
    url = f"mqtt://{quote(USER, safe='')}@{password_broker}"
    env = {k: v for k, v in os.environ.items() if k != BROKER_PASSWORD_ENV}
    refused = subprocess.run(
        [*command, *args, "--broker", url], env=env, capture_output=True, timeout=60, check=False
    )
    assert refused.returncode != 0
    env[BROKER_PASSWORD_ENV] = PASSWORD
    admitted = subprocess.run(
        [*command, *args, "--broker", url], env=env, capture_output=True, timeout=60, check=False
    )
    assert admitted.returncode == 0, admitted.stderr.decode()[-2000:]
