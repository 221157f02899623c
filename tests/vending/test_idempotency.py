"""The idempotent transaction in pipeline mode: writes the work leaves unread still decide."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from gateway import audit
from gateway.vending.config import VendingConfig
from gateway.vending.idempotency import Idempotency, Outcome, VendRequest
from tests.vending.conftest import Vend


async def test_a_conflict_among_unread_writes_rolls_back_and_runs_again(vend: Vend) -> None:
    await vend.execute(
        "INSERT INTO vend_requests (vendor, request_id, operation, body_hash, status, response)"
        " VALUES ('other-vendor', 'taken', 'credit', '\\x00', 200, '')"
    )
    attempts: list[int] = []

    async def work(conn: AsyncConnection[Any]) -> Outcome:
        attempts.append(len(attempts) + 1)
        await conn.execute(
            audit.INSERT,
            audit.values(actor="test", action="attempt", object="-", outcome=f"{len(attempts)}"),
        )
        if len(attempts) == 1:
            # a unique key taken meanwhile: sent, never read here
            await conn.execute(
                "INSERT INTO vend_requests (vendor, request_id, operation, body_hash, status,"
                " response) VALUES ('other-vendor', 'taken', 'credit', '\\x00', 200, '')"
            )
        return Outcome(b'{"ok":true}', "done")

    request = VendRequest("v-test", "req-1", "vend.test", "meter:1")
    body = await Idempotency(vend.pool, VendingConfig()).run(request, "test", {}, work)
    assert body == b'{"ok":true}'
    assert attempts == [1, 2]
    # nothing of the first attempt is left; the second committed with its record and response
    assert (
        await vend.scalar("SELECT string_agg(outcome, ',') FROM audit_log WHERE action = 'attempt'")
        == "2"
    )
    assert (
        await vend.scalar(
            "SELECT response FROM vend_requests WHERE vendor = 'v-test' AND request_id = 'req-1'"
        )
        == b'{"ok":true}'
    )
    assert (
        await vend.scalar(
            "SELECT outcome FROM audit_log WHERE action = 'vend.test' AND request_id = 'req-1'"
        )
        == "done"
    )
