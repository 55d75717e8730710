"""``X-Worker-Id`` on responses (pure ASGI): operators see which replica answered, when they
may (:meth:`~gemma_worker.runtime.state.WorkerState.worker_id_for` decides)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gemma_worker.api.auth import principal_of

HEADER = b"x-worker-id"

_STARTS = {"http.response.start", "websocket.accept", "websocket.http.response.start"}


class WorkerIdMiddleware:
    """Adds ``X-Worker-Id`` to HTTP responses and WebSocket handshakes, for the callers who may
    see it. Must run outside :class:`AuthMiddleware`, which leaves the caller's key in the
    scope."""

    def __init__(self, app: ASGIApp, worker_id_for: Callable[[str | None], str | None]) -> None:
        """``worker_id_for(principal)``: the id to show a caller with that key id, or None."""
        self.app = app
        self.worker_id_for = worker_id_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] in _STARTS:
                shown = self.worker_id_for(principal_of(scope))
                if shown is not None:
                    headers = list(message.get("headers") or [])
                    headers.append((HEADER, shown.encode("latin-1", "replace")))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, tagged)
