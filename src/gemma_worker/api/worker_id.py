"""``X-Worker-Id`` on responses (pure ASGI): operators see which replica answered.

A configured id (``GEMMA_WORKER_ID``) is an opaque name chosen to be shown: it goes on every
response. The default one is the machine's host name and port, which is nobody else's
business: with API keys it goes only to callers that showed a valid key (not on a 401, not
to a keyless ``/health`` probe)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gemma_worker.api.auth import principal_of

HEADER = b"x-worker-id"

_STARTS = {"http.response.start", "websocket.accept", "websocket.http.response.start"}


class WorkerIdMiddleware:
    """Adds ``X-Worker-Id: <worker_id>`` to HTTP responses and WebSocket handshakes (to
    authenticated ones only, unless ``public``). Must run outside :class:`AuthMiddleware`,
    which leaves the caller's key in the scope."""

    def __init__(self, app: ASGIApp, worker_id: str, *, public: bool, keys_enabled: bool) -> None:
        """``public``: the id was configured to be shown to anyone."""
        self.app = app
        self.value = worker_id.encode("latin-1", "replace")
        self.everyone = public or not keys_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] in _STARTS and (self.everyone or principal_of(scope) is not None):
                headers = list(message.get("headers") or [])
                headers.append((HEADER, self.value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, tagged)
