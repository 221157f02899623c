"""Settings from GATEWAY_* variables: validation and secrecy."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.settings import load_settings, redact_url


def test_defaults_point_at_local_services(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GATEWAY_DATABASE_URL", "GATEWAY_MQTT_URL", "GATEWAY_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert (s.mqtt_host, s.mqtt_port, s.mqtt_tls) == ("127.0.0.1", 1883, False)
    assert s.database_url.get_secret_value().startswith("postgresql://")


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MQTT_URL", "mqtts://gw:pw@broker.example:8884")
    monkeypatch.setenv("GATEWAY_MQTT_SHARED_GROUP", "ingest")
    monkeypatch.setenv("GATEWAY_BATCH_MAX_ROWS", "5000")
    s = load_settings()
    assert (s.mqtt_host, s.mqtt_port, s.mqtt_tls) == ("broker.example", 8884, True)
    assert s.mqtt_credentials == ("gw", "pw")
    assert s.mqtt_shared_group == "ingest" and s.batch_max_rows == 5000


def test_every_problem_is_listed_by_variable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "mysql://secret-user:hunter2@db/x")
    monkeypatch.setenv("GATEWAY_MQTT_URL", "http://broker")
    monkeypatch.setenv("GATEWAY_HTTP_PORT", "99999")
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    for name in ("GATEWAY_DATABASE_URL", "GATEWAY_MQTT_URL", "GATEWAY_HTTP_PORT"):
        assert name in text
    assert "hunter2" not in text


def test_secrets_are_redacted_when_described(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql://gw:hunter2@db:5432/gateway")
    monkeypatch.setenv("GATEWAY_MQTT_URL", "mqtt://gw:s3cret@broker:1883")
    s = load_settings()
    shown = repr(s) + str(s.describe())
    assert "hunter2" not in shown and "s3cret" not in shown
    assert s.describe()["database_url"] == "postgresql://gw:***@db:5432/gateway"


def test_redact_url_leaves_password_free_urls_alone() -> None:
    for url in ("mqtt://127.0.0.1:1883", "postgresql:///gateway?host=/run/postgresql"):
        assert redact_url(url) == url


def test_redact_url_hides_query_string_passwords() -> None:
    assert (
        redact_url("postgresql://db/gw?sslmode=require&password=hunter2")
        == "postgresql://db/gw?sslmode=require&password=***"
    )
