"""Project-wide pytest configuration: real PostgreSQL and MQTT fixtures (tests/plugins)."""

pytest_plugins = ["tests.plugins.services", "tests.plugins.gateway", "tests.plugins.auth"]
