"""API-key authentication for every route but ``/health``, ``/ready`` and the chat page's
static files (pure ASGI).

REST requests present ``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (Anthropic's
header); without a valid one they get 401 with a JSON error. A WebSocket may present the same
headers; if it has none, the connection handler
waits for a first ``{"type": "auth", "token": ...}`` message (browsers cannot set headers).
What the middleware found is left in the scope's state for the handlers:

- ``principal``: the key id of a valid key (``None`` when keys are off or none was shown);
- ``grant``: what that key may do (admin, its models);
- ``auth_required``: whether keys are configured;
- ``auth_rejected``: a key was shown and it is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gemma_worker.api.errors import send_error
from gemma_worker.api.ui import is_ui_path
from gemma_worker.core.auth import OPEN_GRANT, KeyGrant, KeyRing, bearer_token
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.runtime.request import Caller

#: Routes that answer without a key: orchestrators and load balancers probe them.
OPEN_PATHS = frozenset({"/health", "/ready"})


def principal_of(scope: Scope) -> str | None:
    """The key id the request authenticated with (``None`` when keys are off)."""
    state: dict[str, Any] = scope.get("state") or {}
    principal = state.get("principal")
    return principal if isinstance(principal, str) else None


def client_identity(scope: Scope) -> str:
    """Who a request counts against for rate limits: its key id, else its client address."""
    principal = principal_of(scope)
    if principal is not None:
        return principal
    client = scope.get("client")
    return f"addr-{client[0]}" if client else "addr-unknown"


def grant_of(scope: Scope) -> KeyGrant:
    """What the request's key may do (everything on a keyless worker)."""
    state: dict[str, Any] = scope.get("state") or {}
    grant = state.get("grant")
    return grant if isinstance(grant, KeyGrant) else OPEN_GRANT


def caller_of(scope: Scope) -> Caller:
    """The request's caller: its key id (sessions and caches), its rate-limit identity and
    the models its key may use."""
    return Caller(principal_of(scope), client_identity(scope), grant_of(scope).models)


class AuthMiddleware:
    """Checks API keys before the app sees a request."""

    def __init__(
        self, app: ASGIApp, keys: KeyRing, count_error: Callable[[str], object] | None = None
    ) -> None:
        """``count_error(code)`` is told of each refusal (for the metrics)."""
        self.app = app
        self.keys = keys
        self.count_error = count_error or (lambda _code: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["auth_required"] = self.keys.enabled
        state["principal"] = None
        state["auth_rejected"] = False
        if not self.keys.enabled:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        token = (
            bearer_token(headers.get("authorization"))
            or headers.get("x-api-key", "").strip()
            or None
        )
        principal = self.keys.identify(token)
        state["principal"] = principal
        state["grant"] = self.keys.grant(principal)
        state["auth_rejected"] = token is not None and principal is None
        if scope["path"] in OPEN_PATHS or is_ui_path(scope["path"]):
            await self.app(scope, receive, send)  # open to all; a valid key is still known
            return
        if principal is None and scope["type"] == "http":
            self.count_error(ErrorCode.UNAUTHORIZED)
            await _unauthorized(send, scope["path"])
            return
        await self.app(scope, receive, send)


async def _unauthorized(send: Send, path: str) -> None:
    error = WorkerError(
        ErrorCode.UNAUTHORIZED, "a valid API key is required (Authorization: Bearer, or x-api-key)"
    )
    await send_error(send, path, error, [(b"www-authenticate", b'Bearer realm="gemma-worker"')])
