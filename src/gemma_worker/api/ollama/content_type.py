"""Ollama reads every request body as JSON, whatever its ``Content-Type``: its documented
``curl -d '{...}'`` sends ``application/x-www-form-urlencoded``. This middleware (pure ASGI)
marks the bodies of Ollama's routes as JSON so they are parsed as such, except for a browser
page from an origin the worker does not accept: a cross-site form or ``text/plain`` post
needs no CORS preflight, and reading it as JSON would let any web page run generations on a
local worker (FastAPI refuses such bodies for that reason; so do we, then)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Receive, Scope, Send

from gemma_worker.api.ollama.errors import is_ollama_path
from gemma_worker.core.hosts import OriginPolicy


class JsonBodyMiddleware:
    """Sets ``Content-Type: application/json`` on requests to Ollama's routes that come from
    no browser (no ``Origin``) or from an accepted origin."""

    def __init__(self, app: ASGIApp, origins: OriginPolicy) -> None:
        """``origins``: the pages the worker trusts."""
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_ollama_path(scope["path"]):
            headers = MutableHeaders(scope=scope)
            if self.origins.allows(headers.get("origin")):
                headers["content-type"] = "application/json"
        await self.app(scope, receive, send)
