"""Property-based fuzzing of the whole HTTP API with schemathesis: no request gets a 5xx.

The schema is read from the running gateway's ``/openapi.json``, so every endpoint, including
ones added later, is fuzzed without touching this file. Cases are generated from the schema
both valid and deliberately invalid (schemathesis' positive and negative modes), sent to a real
gateway with a real database, and every reply must be < 500 and, when it is an error, have the
API's error shape.

The gateway runs in a thread with its own event loop because schemathesis drives requests
synchronously. Operations are enumerated from the schema and each is driven by hypothesis
directly (schemathesis' lazy pytest loader does not run under pytest 9.2). Each entry of
:data:`IDENTITIES` fuzzes the API once with the headers it gives:
anonymous requests always, and callers with credentials where a provider is registered (a
provider gets the test database's URL and returns the headers to send).

Schema-driven generation rarely builds a body that passes every other rule *and* carries a NUL
or a lone surrogate where it would reach the database, so a second, targeted property test
puts such text into each string of an otherwise valid meter.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from gateway.http.security import Role
from gateway.settings import Settings
from tests.plugins.auth import make_api_key
from tests.plugins.gateway import gateway_running, make_settings

HeadersProvider = Callable[[str], Awaitable[dict[str, str]]]


async def _anonymous(database_url: str) -> dict[str, str]:
    del database_url
    return {}


def _with_role(role: Role) -> HeadersProvider:
    async def provider(database_url: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {await make_api_key(database_url, role)}"}

    return provider


IDENTITIES: dict[str, HeadersProvider] = {
    "anonymous": _anonymous,
    "admin": _with_role(Role.ADMIN),  # admin nests operator and technician
    "vendor": _with_role(Role.VENDOR),
}
"""Who fuzzes the API: name → async provider of request headers for a database URL."""

EXAMPLES_PER_OPERATION: dict[str, int] = {"anonymous": 60, "admin": 40, "vendor": 25}
"""Cases per operation for each identity (anonymous requests mostly stop at 401)."""


@dataclass(frozen=True, slots=True)
class RunningApi:
    base_url: str
    headers: dict[str, str]
    identity: str = "anonymous"


@contextmanager
def gateway_in_thread(
    settings_: Settings, provider: HeadersProvider, database_url: str, identity: str = "anonymous"
) -> Iterator[RunningApi]:
    """A real gateway in a thread of its own; yields its base URL and the identity's headers."""
    ready: dict[str, Any] = {}
    started = threading.Event()

    async def serve() -> None:
        stop = asyncio.Event()
        try:
            async with gateway_running(settings_) as handle:
                ready["api"] = RunningApi(
                    f"http://127.0.0.1:{handle.http_port}", await provider(database_url), identity
                )
                ready["stop"] = (asyncio.get_running_loop(), stop)
                started.set()
                await stop.wait()
        except BaseException as exc:
            ready["error"] = exc
            started.set()
            raise

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="fuzzed-gateway")
    thread.start()
    try:
        assert started.wait(60), "gateway did not start within 60 s"
        if "error" in ready:
            raise AssertionError("gateway failed to start") from ready["error"]
        yield ready["api"]
    finally:
        if "stop" in ready:
            loop, stop = ready["stop"]
            loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        assert not thread.is_alive(), "gateway did not stop within 60 s"


@pytest.fixture(params=sorted(IDENTITIES))
def fuzzed_api(
    request: pytest.FixtureRequest, database_url: str, mqtt_url: str, topic_prefix: str
) -> Iterator[RunningApi]:
    settings_ = make_settings(database_url, mqtt_url, topic_prefix, http_max_body_bytes=65536)
    identity = request.param
    with gateway_in_thread(settings_, IDENTITIES[identity], database_url, identity) as api:
        yield api


def _problem(response: Any) -> str | None:
    """Why ``response`` breaks the API's contract for bad requests, or None."""
    if response.status_code >= 500:
        return f"server error {response.status_code}"
    if response.status_code < 400:
        return None
    try:
        body = response.json()
        error = body["error"]
        ok = (
            set(body) == {"error"}
            and isinstance(error.get("code"), str)
            and isinstance(error.get("message"), str)
            and set(error) <= {"code", "message", "fields"}
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        ok = False
    return None if ok else f"error reply without the API's error shape: {response.content[:200]!r}"


def test_no_request_gets_a_server_error(fuzzed_api: RunningApi) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed_api.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5, "the schema lists too few operations to be the gateway's"
    seen: dict[str, set[int]] = {}

    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES_PER_OPERATION[fuzzed_api.identity],
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: Any) -> None:
            response = case.call(
                base_url=fuzzed_api.base_url, headers=fuzzed_api.headers, timeout=30
            )
            seen.setdefault(case.operation.label, set()).add(response.status_code)
            problem = _problem(response)
            assert problem is None, f"{problem}\n{case.as_curl_command()}"

        fuzz()

    # Every operation was really called, and invalid input was really generated and refused.
    assert set(seen) == {op.label for op in operations}
    assert any(400 <= code < 500 for codes in seen.values() for code in codes), seen


_MODBUS_METER: dict[str, Any] = {
    "utility": "electricity",
    "transport": "modbus",
    "time_zone": "Africa/Johannesburg",
    "modbus_host": "10.0.0.5",
    "modbus_port": 502,
    "modbus_unit": 7,
    "modbus_word_order": "CDAB",
    "register_map": {"1.8.0": {"address": 72}},
}
_hostile_text = st.tuples(
    st.text(max_size=12),
    st.sampled_from(["\x00", "\ud800", "\udfff", "\x00\ud83d"]),
    st.text(max_size=12),
).map("".join)


@given(
    field=st.sampled_from(
        [*(k for k, v in _MODBUS_METER.items() if isinstance(v, str)), "map_key", "map_value"]
    ),
    text=_hostile_text,
)
@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
    database=None,
)
def test_unstorable_text_in_any_field_is_refused_cleanly(
    fuzzed_api: RunningApi, field: str, text: str
) -> None:
    body = json.loads(json.dumps(_MODBUS_METER))
    if field == "map_key":
        body["register_map"][text] = {"address": 0}
    elif field == "map_value":
        body["register_map"]["1.8.0"]["note"] = text
    else:
        body[field] = text
    content = json.dumps(body).encode()  # lone surrogates travel as \uXXXX escapes
    response = httpx.put(
        f"{fuzzed_api.base_url}/meters/HOSTILE-1",
        content=content,
        headers={**fuzzed_api.headers, "content-type": "application/json"},
        timeout=30,
    )
    assert _problem(response) is None
    assert 400 <= response.status_code < 500, response.text
    assert text not in response.text
