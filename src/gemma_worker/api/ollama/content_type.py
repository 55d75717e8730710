"""Ollama reads every request body as JSON, whatever its ``Content-Type``: its documented
``curl -d '{...}'`` sends ``application/x-www-form-urlencoded``. This middleware (pure ASGI)
marks the bodies of Ollama's routes as JSON so they are parsed as such."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gemma_worker.api.ollama.errors import is_ollama_path


class JsonBodyMiddleware:
    """Sets ``Content-Type: application/json`` on requests to Ollama's routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_ollama_path(scope["path"]):
            headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
