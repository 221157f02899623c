"""Access control over HTTP: every endpoint's credentials, roles, sessions, CSRF, limits, audit.

Runs the real FastAPI app (ASGI, in process) against a real, migrated PostgreSQL database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.auth import store
from gateway.auth.passwords import hash_password
from gateway.auth.ratelimit import RateLimit, RateLimiter
from gateway.auth.store import LoginPolicy
from gateway.http.app import create_app
from gateway.http.deps import Services
from gateway.http.security import AccessControl, Principal, Role
from gateway.http.security import access_from_settings as build_access
from gateway.metrics import Metrics
from gateway.settings import Settings
from tests.plugins.auth import make_api_key, remember_secret

# Open on purpose: liveness, readiness, metrics (open by default setting) and the login itself.
OPEN = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("POST", "/auth/login")}

# The least role each endpoint needs. A new guarded endpoint is still checked generically
# (401 without credentials, some role refused with 403); add it here to pin its role.
REQUIRED = {
    ("GET", "/meters"): Role.TECHNICIAN,
    ("GET", "/meters/{meter_id}"): Role.TECHNICIAN,
    ("PUT", "/meters/{meter_id}"): Role.OPERATOR,
    ("POST", "/meters/{meter_id}/verify"): Role.OPERATOR,
    ("POST", "/auth/logout"): Role.TECHNICIAN,
    ("GET", "/auth/whoami"): Role.TECHNICIAN,
    ("GET", "/admin/principals"): Role.ADMIN,
    ("POST", "/admin/principals"): Role.ADMIN,
    ("POST", "/admin/principals/{name}/disable"): Role.ADMIN,
    ("GET", "/admin/principals/{name}/keys"): Role.ADMIN,
    ("POST", "/admin/principals/{name}/keys"): Role.ADMIN,
    ("POST", "/admin/keys/{key_id}/revoke"): Role.ADMIN,
    ("GET", "/admin/audit"): Role.ADMIN,
}
BELOW = {
    Role.TECHNICIAN: Role.VENDOR,
    Role.OPERATOR: Role.TECHNICIAN,
    Role.ADMIN: Role.OPERATOR,
    Role.VENDOR: Role.TECHNICIAN,
}
PARAMS = {"meter_id": "M-1", "name": "nobody", "key_id": "999999"}


@dataclass
class Env:
    url: str
    app: Any
    access: AccessControl
    client: httpx.AsyncClient

    async def key(self, role: Role, name: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {await make_api_key(self.url, role, name)}"}

    async def scalar(self, sql: str, *params: Any) -> Any:
        async with await psycopg.AsyncConnection.connect(self.url) as conn:
            row = await (await conn.execute(sql, params)).fetchone()
            return row[0] if row else None

    async def execute(self, sql: str, *params: Any) -> None:
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            await conn.execute(sql, params)


def settings_for(database_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {"database_url": database_url, "rate_limit_burst": 100_000}
    values.update(extra)
    return Settings(**values)


@pytest.fixture
async def make_env(database_url: str) -> AsyncIterator[Callable[..., Any]]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url, min_size=1, max_size=4, open=False
    )
    await pool.open()
    clients: list[httpx.AsyncClient] = []

    async def make(*, policy: LoginPolicy | None = None, **settings: Any) -> Env:
        access = build_access(settings_for(database_url, **settings), pool)
        if policy is not None:
            access.policy = policy
            access.authenticators = ()
            access.__post_init__()
        services = Services(
            pool=pool,
            mqtt=None,  # type: ignore[arg-type]
            intake=None,  # type: ignore[arg-type]
            pipeline=None,  # type: ignore[arg-type]
            metrics=Metrics(),
        )
        app = create_app(services, access)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )
        clients.append(client)
        return Env(database_url, app, access, client)

    yield make
    for client in clients:
        await client.aclose()
    await pool.close()


@pytest.fixture
async def env(make_env: Callable[..., Any]) -> Env:
    result: Env = await make_env()
    return result


def operations(app: Any) -> list[tuple[str, str, dict[str, Any]]]:
    doc = app.openapi()
    return [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in {"get", "put", "post", "patch", "delete"}
    ]


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PARAMS.get(m.group(1), "1"), path)


async def call(env: Env, method: str, path: str, headers: dict[str, str] | None = None) -> int:
    body = {} if method in {"PUT", "POST", "PATCH"} else None
    response = await env.client.request(method, concrete(path), json=body, headers=headers)
    return response.status_code


# -- the OpenAPI document declares security everywhere ---------------------------------------


async def test_every_operation_declares_its_security_scheme(env: Env) -> None:
    doc = env.app.openapi()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": schemes["apiKey"]["description"]
    }  # fmt: skip
    assert schemes["session"]["type"] == "apiKey" and schemes["session"]["in"] == "cookie"
    ops = operations(env.app)
    assert len(ops) >= len(REQUIRED) + len(OPEN)
    for method, path, op in ops:
        if (method, path) in OPEN:
            assert "security" not in op, f"{method} {path} is open but declares security"
            continue
        assert {"apiKey": []} in op.get("security", []), f"{method} {path} has no security"
        assert {"session": []} in op.get("security", []), f"{method} {path} has no session"


async def test_metrics_closed_by_setting_declares_security(make_env: Callable[..., Any]) -> None:
    env: Env = await make_env(metrics_open=False)
    (op,) = [op for m, p, op in operations(env.app) if (m, p) == ("GET", "/metrics")]
    assert {"apiKey": []} in op["security"]
    assert (await env.client.get("/metrics")).status_code == 401
    technician = await env.key(Role.TECHNICIAN)
    response = await env.client.get("/metrics", headers=technician)
    assert response.status_code == 200 and "gateway_" in response.text
    assert (await env.client.get("/metrics", headers=await env.key(Role.VENDOR))).status_code == 403


async def test_open_endpoints_answer_without_credentials(env: Env) -> None:
    assert (await env.client.get("/healthz")).json() == {"status": "ok"}
    assert (await env.client.get("/metrics")).status_code == 200


# -- every guarded endpoint: 401 without or with revoked credentials, 403 for a wrong role ----


async def test_every_guarded_endpoint_refuses_missing_bad_and_revoked_credentials(
    env: Env,
) -> None:
    admin = await env.key(Role.ADMIN, "revoked-admin")
    key_id = await env.scalar(
        "SELECT k.id FROM api_keys k JOIN principals p ON p.id = k.principal_id"
        " WHERE p.name = 'revoked-admin'"
    )
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        await store.revoke_api_key(conn, key_id)
        await conn.commit()
    forged = {"Authorization": "Bearer mgw_" + "A" * 43}
    checked = 0
    for method, path, _ in operations(env.app):
        if (method, path) in OPEN:
            continue
        assert await call(env, method, path) == 401, f"{method} {path} without credentials"
        assert await call(env, method, path, forged) == 401, f"{method} {path} forged key"
        assert await call(env, method, path, admin) == 401, f"{method} {path} revoked key"
        checked += 1
    assert checked >= len(REQUIRED)


async def test_every_guarded_endpoint_refuses_a_role_below_its_own(env: Env) -> None:
    keys = {role: await env.key(role) for role in Role}
    for method, path, _ in operations(env.app):
        if (method, path) in OPEN:
            continue
        needed = REQUIRED.get((method, path))
        if needed is None:  # an endpoint this table does not know yet: some role must be refused
            codes = {role: await call(env, method, path, keys[role]) for role in Role}
            assert 403 in codes.values(), f"{method} {path} refuses no role: {codes}"
            continue
        wrong = await call(env, method, path, keys[BELOW[needed]])
        assert wrong == 403, f"{method} {path} with {BELOW[needed]}: {wrong}"
        right = await call(env, method, path, keys[needed])
        assert right not in (401, 403), f"{method} {path} with {needed}: {right}"


async def test_disabled_principal_is_refused(env: Env) -> None:
    headers = await env.key(Role.TECHNICIAN, "tech-gone")
    assert (await env.client.get("/meters", headers=headers)).status_code == 200
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        await store.disable_principal(conn, "tech-gone")
        await conn.commit()
    assert (await env.client.get("/meters", headers=headers)).status_code == 401


async def test_unauthenticated_response_shape(env: Env) -> None:
    response = await env.client.get("/meters")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"


# -- people: password login, session cookie, CSRF, lockout, expiry ----------------------------


async def make_person(env: Env, name: str, role: Role) -> str:
    password = f"pw-{uuid.uuid4().hex}"
    remember_secret(password)
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        await store.create_principal(
            conn, name=name, role=role, kind="person", password_hash=await hash_password(password)
        )
        await conn.commit()
    return password


async def login(env: Env, name: str, password: str, *, form: bool = False) -> httpx.Response:
    if form:
        return await env.client.post("/auth/login", data={"name": name, "password": password})
    return await env.client.post("/auth/login", json={"name": name, "password": password})


async def test_login_sets_a_hardened_cookie_and_csrf_guards_unsafe_requests(env: Env) -> None:
    password = await make_person(env, "olga", Role.OPERATOR)
    response = await login(env, "olga", password, form=True)
    assert response.status_code == 200, response.text
    cookie = response.headers["set-cookie"]
    assert "gw_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback
    csrf = response.json()["csrf_token"]
    assert (await env.client.get("/auth/whoami")).json()["principal"] == "olga"
    body = {"utility": "water"}
    refused = await env.client.put("/meters/W-1", json=body)
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
    wrong = await env.client.put("/meters/W-1", json=body, headers={"X-CSRF-Token": "x" + csrf})
    assert wrong.status_code == 403
    ok = await env.client.put("/meters/W-1", json=body, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200, ok.text
    # A form post carries the token as a field.
    form = await env.client.post("/meters/W-1/verify", data={"csrf_token": csrf})
    assert form.status_code == 200, form.text
    assert await env.scalar("SELECT count(*) FROM sessions") == 1
    logout = await env.client.post("/auth/logout", headers={"X-CSRF-Token": csrf})
    assert logout.status_code == 204
    assert await env.scalar("SELECT count(*) FROM sessions") == 0
    assert (await env.client.get("/auth/whoami")).status_code == 401


async def test_secure_cookie_under_tls(make_env: Callable[..., Any]) -> None:
    env: Env = await make_env(behind_tls_proxy=True)
    password = await make_person(env, "tess", Role.TECHNICIAN)
    response = await login(env, "tess", password)
    assert "Secure" in response.headers["set-cookie"]


async def test_repeated_failures_lock_the_account(make_env: Callable[..., Any]) -> None:
    policy = LoginPolicy(max_failures=3, slowdown_after=1, slowdown_max_s=0.05)
    env: Env = await make_env(policy=policy)
    password = await make_person(env, "lena", Role.TECHNICIAN)
    for _ in range(3):
        assert (await login(env, "lena", "wrong-password-1")).status_code == 401
    locked = await login(env, "lena", password)
    assert locked.status_code == 401  # even the right password, while locked
    assert "locked" in locked.json()["error"]["message"]  # says it may be, not that it is
    assert await env.scalar("SELECT locked_until > now() FROM principals WHERE name='lena'")
    await env.execute("UPDATE principals SET locked_until = now() - interval '1 s'")
    assert (await login(env, "lena", password)).status_code == 200
    outcomes = await env.scalar(
        "SELECT string_agg(outcome, ',' ORDER BY id) FROM audit_log WHERE action = 'login'"
    )
    assert outcomes == "bad_credentials,bad_credentials,locked,locked,ok"
    unknown = await login(env, "nobody-here", "whatever-password")
    assert unknown.status_code == 401 and unknown.json() == locked.json()


def test_failed_logins_slow_down() -> None:
    policy = LoginPolicy(slowdown_after=2, slowdown_max_s=4.0)
    delays = [policy.delay_s(n) for n in range(1, 9)]
    assert delays[:2] == [0.0, 0.0]
    assert delays[2:] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]


async def test_sessions_expire_when_idle_and_absolutely(env: Env) -> None:
    password = await make_person(env, "ivan", Role.TECHNICIAN)
    assert (await login(env, "ivan", password)).status_code == 200
    assert (await env.client.get("/auth/whoami")).status_code == 200
    await env.execute("UPDATE sessions SET last_seen_at = now() - interval '31 minutes'")
    assert (await env.client.get("/auth/whoami")).status_code == 401
    env.client.cookies.clear()
    assert (await login(env, "ivan", password)).status_code == 200
    await env.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 s'"
        " WHERE last_seen_at > now() - interval '1 min'"
    )
    assert (await env.client.get("/auth/whoami")).status_code == 401


# -- rate limits --------------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after(make_env: Callable[..., Any]) -> None:
    env: Env = await make_env(rate_limit_burst=3, rate_limit_staff_per_min=6)
    headers = await env.key(Role.TECHNICIAN)
    other = await env.key(Role.TECHNICIAN)
    codes = [(await env.client.get("/meters", headers=headers)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = await env.client.get("/meters", headers=headers)
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 10
    assert (await env.client.get("/meters", headers=other)).status_code == 200  # per principal


# -- audit ----------------------------------------------------------------------------------


async def test_state_changes_and_refusals_are_audited_and_admins_can_read_them(env: Env) -> None:
    operator = await env.key(Role.OPERATOR, "op-1")
    put = await env.client.put(
        "/meters/A-1", json={"utility": "water"}, headers={**operator, "X-Request-ID": "req-42"}
    )
    assert put.status_code == 200 and put.headers["x-request-id"] == "req-42"
    assert (await env.client.post("/meters/A-1/verify")).status_code == 401
    admin = await env.key(Role.ADMIN)
    rows = (await env.client.get("/admin/audit", headers=admin)).json()
    by_action = {(r["action"], r["outcome"]): r for r in rows}
    ok = by_action[("PUT /meters/{meter_id}", "ok")]
    assert (ok["actor"], ok["object"], ok["request_id"]) == ("op-1", "/meters/A-1", "req-42")
    assert ok["source"] is not None
    refused = by_action[("POST /meters/{meter_id}/verify", "unauthenticated")]
    assert refused["actor"] is None
    filtered = await env.client.get("/admin/audit", params={"actor": "op-1"}, headers=admin)
    assert {r["actor"] for r in filtered.json()} == {"op-1"}
    assert (await env.client.get("/admin/audit", headers=operator)).status_code == 403


async def test_audit_log_is_append_only(env: Env) -> None:
    await env.client.post("/meters/X/verify")  # one record
    refused = ("UPDATE audit_log SET outcome = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log")
    for sql in refused:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await env.execute(sql)
    assert await env.scalar("SELECT count(*) FROM audit_log") == 1


# -- the admin API ---------------------------------------------------------------------------


async def test_admin_manages_principals_and_keys(env: Env) -> None:
    admin = await env.key(Role.ADMIN)
    created = await env.client.post(
        "/admin/principals", json={"name": "pos-7", "role": "vendor", "kind": "machine"},
        headers=admin,
    )  # fmt: skip
    assert created.status_code == 201, created.text
    first = created.json()["api_key"]
    remember_secret(first)
    assert re.fullmatch(r"mgw_[A-Za-z0-9_-]{43}", first)  # 256 random bits
    vendor = {"Authorization": f"Bearer {first}"}
    assert (await env.client.get("/meters", headers=vendor)).status_code == 403  # authenticated
    again = await env.client.post(
        "/admin/principals", json={"name": "pos-7", "role": "vendor", "kind": "machine"},
        headers=admin,
    )  # fmt: skip
    assert again.status_code == 409
    second = await env.client.post("/admin/principals/pos-7/keys", json={}, headers=admin)
    remember_secret(second.json()["api_key"])
    listed = (await env.client.get("/admin/principals/pos-7/keys", headers=admin)).json()
    assert len(listed) == 2 and all(first not in str(k) for k in listed)
    assert listed[0]["last_used_at"] is not None and listed[1]["last_used_at"] is None
    revoke = await env.client.post(f"/admin/keys/{listed[0]['id']}/revoke", headers=admin)
    assert revoke.status_code == 204
    assert (await env.client.get("/meters", headers=vendor)).status_code == 401
    rotated = {"Authorization": f"Bearer {second.json()['api_key']}"}
    assert (await env.client.get("/meters", headers=rotated)).status_code == 403
    weak = await env.client.post(
        "/admin/principals",
        json={"name": "pat", "role": "technician", "kind": "person", "password": "short"},
        headers=admin,
    )
    assert weak.status_code == 422
    assert await env.scalar("SELECT count(*) FROM audit_log WHERE action = 'api_key.revoke'") == 1
    names = [p["name"] for p in (await env.client.get("/admin/principals", headers=admin)).json()]
    assert "pos-7" in names
    disabled = await env.client.post("/admin/principals/pos-7/disable", headers=admin)
    assert disabled.status_code == 204
    assert (await env.client.get("/meters", headers=rotated)).status_code == 401


def test_roles_nest_for_staff_and_vendor_stands_apart() -> None:
    def p(role: Role) -> Principal:
        return Principal(id=1, name="x", role=role, kind="machine")

    assert p(Role.ADMIN).has(Role.OPERATOR) and p(Role.ADMIN).has(Role.TECHNICIAN)
    assert p(Role.OPERATOR).has(Role.TECHNICIAN) and not p(Role.OPERATOR).has(Role.ADMIN)
    assert not p(Role.TECHNICIAN).has(Role.OPERATOR)
    assert p(Role.VENDOR).has(Role.VENDOR) and not p(Role.VENDOR).has(Role.TECHNICIAN)
    assert not p(Role.ADMIN).has(Role.VENDOR)


def test_token_bucket_arithmetic() -> None:
    now = [0.0]
    limiter = RateLimiter({Role.VENDOR: RateLimit(60, 2)}, clock=lambda: now[0])
    vendor = Principal(id=7, name="v", role=Role.VENDOR, kind="machine")
    staff = Principal(id=8, name="s", role=Role.ADMIN, kind="machine")
    assert [limiter.check(vendor) for _ in range(3)] == [0.0, 0.0, 1.0]
    now[0] = 0.5
    assert limiter.check(vendor) == pytest.approx(0.5)
    now[0] = 1.0
    assert limiter.check(vendor) == 0.0
    assert all(limiter.check(staff) == 0.0 for _ in range(100))  # no limit configured


async def test_login_attempts_per_source_address_are_limited(
    make_env: Callable[..., Any],
) -> None:
    policy = LoginPolicy(attempts_per_source_per_min=1, slowdown_after=100)
    env: Env = await make_env(policy=policy)
    codes = [(await login(env, f"user{n}", "some-password-x")).status_code for n in range(11)]
    assert codes == [401] * 10 + [429]  # a burst of 10, then one a minute
    retry_after = int((await login(env, "user0", "some-password-x")).headers["retry-after"])
    assert 1 <= retry_after <= 60
