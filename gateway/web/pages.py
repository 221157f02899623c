"""The field technician's pages: log in, work list, search, meter card (server-rendered HTML).

Pages read through the same functions as the JSON API (:mod:`gateway.web.api`, the registry,
the alert queries); actions are sent by the page's script to the JSON API itself with the
session's CSRF token and an ``Idempotency-Key``. A request without a valid session is sent to
the login page. The login form carries its own CSRF token (a random value in a cookie and the
form: a site that cannot read the cookie cannot log a victim into an attacker's account).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from psycopg import AsyncConnection, OperationalError
from psycopg.rows import dict_row

from gateway import registry
from gateway.auth import store
from gateway.auth.authenticators import SESSION_COOKIE
from gateway.auth.model import csrf_token_for
from gateway.detection import queries as alert_queries
from gateway.errors import AuthError, NotFoundError, RateLimitedError
from gateway.http.auth_routes import login as api_login
from gateway.http.db import DbConn
from gateway.http.security import AccessControl, Principal, Role, optional_principal, require
from gateway.web import api
from gateway.web.present import (
    LIVE_COMMAND_STATES,
    VOLTAGE,
    Point,
    age_in_words,
    command_choices,
    command_summary,
    consumption,
    geo_uri,
    main_register,
    svg_chart,
    unit_of,
)
from gateway.web.queries import Interval

__all__ = ["STATIC_DIR", "router"]

HERE: Final = Path(__file__).parent
STATIC_DIR: Final = HERE / "static"
LOGIN_CSRF_COOKIE: Final = "gw_login_csrf"
RANGES: Final = (("24h", "24 h"), ("7d", "7 days"), ("30d", "30 days"))
_SPANS: Final[dict[str, tuple[Interval, int]]] = {
    "24h": ("hour", 1),
    "7d": ("hour", 7),
    "30d": ("day", 30),
}

router = APIRouter(prefix="/field", include_in_schema=False)

_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(("html",)),
    auto_reload=False,
)
_env.globals["static"] = lambda name: f"/field/static/{name}"


def _html(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("generated_at", datetime.now(UTC).isoformat())
    response = HTMLResponse(_env.get_template(template).render(**context), status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/field/login?next={quote(target, safe='')}", status_code=303)


def _csrf(request: Request) -> str | None:
    token = request.cookies.get(SESSION_COOKIE)
    return csrf_token_for(token) if token else None


async def _person(request: Request) -> Principal | None:
    """The logged-in staff member, or None (no, expired or insufficient credentials)."""
    try:
        principal = await optional_principal(request)
    except (AuthError, RateLimitedError):
        return None
    if principal is None or not principal.has(Role.TECHNICIAN):
        return None
    return principal


Person = Annotated[Principal | None, Depends(_person)]


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/field/") and not value.startswith("//"):
        return value
    return "/field/"


@router.get("/sw.js")
async def service_worker() -> FileResponse:
    """The service worker (no data in it, open to all): served from ``/field/`` so that its
    scope covers every field page. ``no-cache``: a changed worker reaches phones at once."""
    return FileResponse(
        STATIC_DIR / "sw.js", media_type="text/javascript", headers={"Cache-Control": "no-cache"}
    )


@router.get("/offline", response_class=HTMLResponse)
async def offline_page() -> HTMLResponse:
    """What the service worker shows for a page not saved on the phone (no data, open to all)."""
    return _html("offline.html", principal=None, csrf=None, generated_at=None)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = _html("login.html", login_csrf=token, next=_safe_next(next), principal=None)
    access: AccessControl = request.app.state.access
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=access.secure_cookies,
        path="/field/login",
    )
    return response


@router.post("/login", response_class=HTMLResponse)
async def login_submit(request: Request) -> Response:
    form = await request.form()
    sent, expected = form.get("csrf_token"), request.cookies.get(LOGIN_CSRF_COOKIE)
    given = form.get("next")
    target = _safe_next(given if isinstance(given, str) else None)
    if not isinstance(sent, str) or not expected or not secrets.compare_digest(sent, expected):
        return _html(
            "login.html",
            status=403,
            error="The form expired; please log in again.",
            login_csrf=expected or "",
            next=target,
            principal=None,
        )
    carrier = Response()
    try:
        await api_login(request, carrier)
    except (AuthError, RateLimitedError) as exc:
        status = 429 if isinstance(exc, RateLimitedError) else 401
        return _html(
            "login.html",
            status=status,
            error=str(exc),
            login_csrf=expected,
            next=target,
            principal=None,
        )
    except OperationalError:  # no connection free in time, or the database away
        busy = _html(
            "login.html",
            status=503,
            error="The service is busy; please try again in a moment.",
            login_csrf=expected,
            next=target,
            principal=None,
        )
        busy.headers["Retry-After"] = "2"
        return busy
    response = RedirectResponse(target, status_code=303)
    for name, value in carrier.raw_headers:
        if name == b"set-cookie":
            response.raw_headers.append((name, value))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/field/login")
    return response


@router.post("/logout")
async def logout(
    request: Request, principal: Annotated[Principal, Depends(require(Role.TECHNICIAN))]
) -> Response:
    """End the session (the form carries the session's CSRF token, checked by ``require``)."""
    del principal
    access: AccessControl = request.app.state.access
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        async with access.pool.connection(timeout=access.db_wait_s) as conn:
            await store.delete_session(conn, token)
    response = RedirectResponse("/field/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def _locations(conn: AsyncConnection[Any], ids: list[str]) -> dict[str, dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT meter_id, address, area, latitude, longitude FROM meters"
            " WHERE meter_id = ANY(%s)",
            (ids,),
        )
        return {row["meter_id"]: row for row in await cur.fetchall()}


@router.get("/", response_class=HTMLResponse)
async def worklist_page(
    request: Request,
    person: Person,
    conn: DbConn,
    area: Annotated[str | None, Query(max_length=100)] = None,
    kind: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    if person is None:
        return _to_login(request)
    items = await alert_queries.worklist(conn, limit=500)
    where = await _locations(conn, [i["meter_id"] for i in items])
    now = datetime.now(UTC)
    shown = []
    areas = sorted({w["area"] for w in where.values() if w["area"]})
    kinds = sorted({r for i in items for r in i["reasons"]})
    for item in items:
        loc = where.get(item["meter_id"], {})
        if area and loc.get("area") != area:
            continue
        if kind and kind not in item["reasons"]:
            continue
        label = f"Meter {item['meter_id']}"
        shown.append(
            {
                **item,
                "address": loc.get("address"),
                "area": loc.get("area"),
                "geo": geo_uri(loc.get("latitude"), loc.get("longitude"), label),
                "since_words": age_in_words((now - item["since"]).total_seconds()),
            }
        )
    return _html(
        "worklist.html",
        items=shown,
        areas=areas,
        kinds=kinds,
        area=area or "",
        kind=kind or "",
        principal=person,
        csrf=_csrf(request),
    )


@router.get("/search", response_class=HTMLResponse)
async def search_page(
    request: Request,
    person: Person,
    conn: DbConn,
    q: Annotated[str, Query(max_length=100)] = "",
) -> Response:
    if person is None:
        return _to_login(request)
    results = await registry.search_meters(conn, q) if q.strip() else []
    return _html("search.html", q=q, results=results, principal=person, csrf=_csrf(request))


async def _account(conn: AsyncConnection[Any], account: str | None) -> dict[str, Any]:
    if account is None:
        return {"indigent": False, "customer_class": None}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT customer_class, indigent_from IS NOT NULL"
            " AND indigent_from <= current_date"
            " AND (indigent_to IS NULL OR indigent_to >= current_date) AS indigent"
            " FROM accounts WHERE account_id = %s",
            (account,),
        )
        row = await cur.fetchone()
    return row or {"indigent": False, "customer_class": None}


async def _chart(
    conn: AsyncConnection[Any], meter: dict[str, Any], range_key: str, *, timescale: bool
) -> tuple[str, str | None]:
    interval, days = _SPANS[range_key]
    until = datetime.now(UTC)
    since = until - timedelta(days=days)
    register = main_register(meter["utility"])
    unit = unit_of(register, meter["utility"]) if register else ""
    consumption_svg = svg_chart([], title="Consumption", unit=unit)
    if register is not None:
        data = await api.readings_of(
            conn,
            meter["meter_id"],
            channel=register,
            interval=interval,
            since=since,
            until=until,
            timescale=timescale,
        )
        points = consumption(
            [(b["bucket"], b["first_value"], b["last_value"]) for b in data["buckets"]]
        )
        consumption_svg = svg_chart(points, title=f"Consumption per {interval}", unit=unit)
    voltage_svg = None
    if meter["utility"] == "electricity":
        data = await api.readings_of(
            conn,
            meter["meter_id"],
            channel=VOLTAGE,
            interval=interval,
            since=since,
            until=until,
            timescale=timescale,
        )
        points = [Point(b["bucket"], b["avg_value"]) for b in data["buckets"]]
        voltage_svg = svg_chart(points, title="Voltage L1 (average)", unit="V", kind="line")
    return consumption_svg, voltage_svg


@router.get("/meters/{meter_id}", response_class=HTMLResponse)
async def meter_page(
    request: Request,
    meter_id: api.MeterId,
    person: Person,
    conn: DbConn,
    range: Annotated[str, Query(pattern="^(24h|7d|30d)$")] = "24h",
) -> Response:
    if person is None:
        return _to_login(request)
    try:
        timescale = await api.schema_variant(request).timescale(conn)
        card = await api.build_card(
            conn, meter_id, with_commands=api.commands_available(request), timescale=timescale
        )
    except NotFoundError:
        return _html(
            "search.html",
            status=404,
            q=meter_id,
            results=[],
            principal=person,
            csrf=_csrf(request),
        )
    meter = card["meter"]
    consumption_svg, voltage_svg = await _chart(conn, meter, range, timescale=timescale)
    register = main_register(meter["utility"])
    commands = [{**c, "summary": command_summary(c)} for c in card["commands"]]
    live = [c["action"] for c in commands if c["state"] in LIVE_COMMAND_STATES]
    return _html(
        "meter.html",
        commands=commands,
        command_choices=command_choices(
            meter["utility"], card["relay"], card["valve"], meter["reconnect_mode"], live
        )
        if card["commands_available"] and meter["verified"] and meter["transport"] == "mqtt"
        else [],
        card=card,
        m=meter,
        account=await _account(conn, meter["account"]),
        geo=geo_uri(meter["latitude"], meter["longitude"], f"Meter {meter_id}"),
        ranges=RANGES,
        range=range,
        consumption_svg=consumption_svg,
        voltage_svg=voltage_svg,
        main_unit=unit_of(register, meter["utility"]) if register else "",
        can_operate=person.has(Role.OPERATOR),
        principal=person,
        csrf=_csrf(request),
        generated_at=card["generated_at"].isoformat(),
    )
