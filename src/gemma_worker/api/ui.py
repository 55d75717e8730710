"""The chat page: ``GET /ui/`` and its assets, shipped as package data (no build step, no CDN).

The page is static and holds no secret, so it is served without an API key (it asks the user
for one). Every URL in it is relative, so it also works behind a proxy under a sub-path. It is
sent with a strict Content-Security-Policy: only this origin's scripts, styles and
connections, no inline script, no framing.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

#: The assets, by the name they are served under.
_MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "markdown.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

#: ``'self'`` covers this origin's ``ws:``/``wss:`` URL too (CSP level 3).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def is_ui_path(path: str) -> bool:
    """Whether ``path`` is the page or one of its assets (served without a key)."""
    return path == "/ui" or path.startswith("/ui/")


def load_assets() -> dict[str, bytes]:
    """The page's files, read once from the package."""
    folder = resources.files("gemma_worker") / "ui"
    return {name: (folder / name).read_bytes() for name in _MEDIA_TYPES}


def ui_router(assets: dict[str, bytes]) -> APIRouter:
    """Routes serving ``assets`` under ``/ui/``; ``/ui`` redirects there."""
    router = APIRouter(include_in_schema=False)

    @router.get("/ui")
    async def ui_redirect() -> RedirectResponse:
        # Relative, so a proxy's sub-path is kept: /gemma/ui -> /gemma/ui/.
        return RedirectResponse("ui/", status_code=308)

    @router.get("/ui/")
    async def ui_page() -> Response:
        return _asset(assets, "index.html")

    @router.get("/ui/{name}")
    async def ui_asset(name: str) -> Response:
        return _asset(assets, name)

    return router


def _asset(assets: dict[str, bytes], name: str) -> Response:
    body = assets.get(name)
    if body is None:
        raise HTTPException(status_code=404, detail="no such file")
    return Response(body, media_type=_MEDIA_TYPES[name], headers=_HEADERS)


class BrowserRedirectMiddleware:
    """Sends a browser that opens ``/`` (it asks for ``text/html``) to the chat page; API
    clients keep the JSON there. Runs before authentication: the page asks for the key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/"
            and scope["method"] in {"GET", "HEAD"}
            and "text/html" in Headers(scope=scope).get("accept", "")
        ):
            await RedirectResponse("ui/", status_code=303)(scope, receive, send)
            return
        await self.app(scope, receive, send)
