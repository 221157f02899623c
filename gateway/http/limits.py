"""Request-body limit: a body over the configured size is answered 413 before any handler runs.

A pure ASGI middleware. The body is read (declared length or chunked) up to the limit and handed
to the application in one piece, so that a handler never starts on a request it must then
refuse. Past the limit the rest of the body is read and dropped, up to :data:`DRAIN_FACTOR`
times the limit, before the 413 goes out: closing a connection with unread data makes the
kernel reset it, and the client would see a broken connection instead of the answer. A body
declared larger than that is refused at once, unread. The reply has the API's error shape
(:mod:`gateway.http.errors`).
"""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http.errors import error_response

__all__ = ["DRAIN_FACTOR", "BodyLimit"]

DRAIN_FACTOR: Final = 8


class BodyLimit:
    """Refuse HTTP request bodies larger than ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "payload_too_large",
            f"the request body is larger than {self.max_bytes} bytes",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        drain_limit = DRAIN_FACTOR * self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > drain_limit:
                await self._refuse(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        first: Message | None = None
        while True:
            message = await receive()
            if message["type"] != "http.request":
                first = message  # the client went away; let the application see it
                break
            body = message.get("body", b"")
            size += len(body)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                if not more or size > drain_limit:
                    await self._refuse(scope, receive, send)
                    return
                chunks.clear()
                continue
            chunks.append(body)
            if not more:
                break
        pending: list[Message] = [
            first if first is not None else {"type": "http.request", "body": b"".join(chunks)}
        ]

        async def replay() -> Message:
            if pending:
                return pending.pop()
            return await receive()

        await self.app(scope, replay, send)
