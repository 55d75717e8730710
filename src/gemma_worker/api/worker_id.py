"""``X-Worker-Id`` on every response (pure ASGI): operators see which replica answered."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-worker-id"

_STARTS = {"http.response.start", "websocket.accept", "websocket.http.response.start"}


class WorkerIdMiddleware:
    """Adds ``X-Worker-Id: <worker_id>`` to HTTP responses and WebSocket handshakes."""

    def __init__(self, app: ASGIApp, worker_id: str) -> None:
        self.app = app
        self.value = worker_id.encode("latin-1", "replace")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] in _STARTS:
                headers = list(message.get("headers") or [])
                headers.append((HEADER, self.value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, tagged)
