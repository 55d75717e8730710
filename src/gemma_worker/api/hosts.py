"""The ``Host`` check and CORS (pure ASGI): the worker answers only the names it serves, and
lets only trusted pages read its answers (``core/hosts.py`` says which, and why)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from gemma_worker.api.asgi_headers import first_header
from gemma_worker.api.errors import response_for, send_error
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.hosts import AllowedHosts, OriginPolicy

_REFUSED = WorkerError(
    ErrorCode.HOST_NOT_ALLOWED,
    "this worker does not serve that host name (see GEMMA_ALLOWED_HOSTS)",
)


class AllowedHostsMiddleware:
    """Refuses every HTTP request and WebSocket handshake whose ``Host`` is not allowed with
    403 ``HOST_NOT_ALLOWED`` in the path's dialect, before anything else runs: no key is
    checked, no body read, no route reached."""

    def __init__(
        self, app: ASGIApp, hosts: AllowedHosts, count_error: Callable[[str], object]
    ) -> None:
        """``count_error(code)`` is told of each refusal (for the metrics)."""
        self.app = app
        self.hosts = hosts
        self.count_error = count_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"} or self.hosts.allows(_host(scope)):
            await self.app(scope, receive, send)
            return
        self.count_error(_REFUSED.code)
        if scope["type"] == "http":
            await send_error(send, scope["path"], _REFUSED)
            return
        ws = WebSocket(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):
            await ws.send_denial_response(response_for(scope["path"], _REFUSED))
        else:  # the server answers a close before accept with a bare 403
            await ws.close(1008)


def _host(scope: Scope) -> str | None:
    """The request's first ``Host`` header."""
    value = first_header(scope, b"host")
    return None if value is None else value.decode("latin-1")


class TrustedOriginsCORS(CORSMiddleware):
    """Starlette's CORS with the worker's origin rule: a page may read answers when its
    origin is a configured CORS origin or its host is an allowed host."""

    def __init__(self, app: ASGIApp, origins: OriginPolicy) -> None:
        super().__init__(
            app,
            allow_origins=(),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
        )
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Starlette's, except that a request without ``Origin`` (no browser page: API
        clients) skips its header parsing and only gets ``Vary: Origin``, as Starlette
        gives it."""
        if scope["type"] == "http" and first_header(scope, b"origin") is None:
            await self.app(scope, receive, functools.partial(_vary_origin, send=send))
            return
        await super().__call__(scope, receive, send)

    def is_allowed_origin(self, origin: str) -> bool:
        """Whether a page from ``origin`` may read the answer."""
        return self.origins.allows(origin)


async def _vary_origin(message: Message, send: Send) -> None:
    """``message``, a response start with ``Origin`` added to its ``Vary`` (one header)."""
    if message["type"] == "http.response.start":
        headers = list(message.get("headers") or ())
        varies = [value for name, value in headers if name.lower() == b"vary"]
        headers = [(name, value) for name, value in headers if name.lower() != b"vary"]
        headers.append((b"vary", b", ".join([*varies, b"Origin"])))
        message["headers"] = headers
    await send(message)
