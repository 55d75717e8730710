"""The worker's CORS layer answers as Starlette's does: its shortcut for requests without an
``Origin`` (API clients) changes no header."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gemma_worker.api.hosts import TrustedOriginsCORS
from gemma_worker.core.hosts import AllowedHosts, OriginPolicy

HOSTS = AllowedHosts(("localhost", "127.0.0.1"))


def _app(cors: Middleware) -> Starlette:
    async def plain(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def varies(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True}, headers={"Vary": "Accept-Encoding"})

    routes = [Route("/plain", plain, methods=["POST"]), Route("/varies", varies, methods=["POST"])]
    return Starlette(routes=routes, middleware=[cors])


def _starlettes() -> Middleware:
    """Starlette's own class with the worker's rule: the reference."""

    class Reference(CORSMiddleware):
        def is_allowed_origin(self, origin: str) -> bool:
            return OriginPolicy((), HOSTS).allows(origin)

    return Middleware(
        Reference,
        allow_origins=(),
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["*"],
    )


@pytest.mark.parametrize("path", ["/plain", "/varies"])
@pytest.mark.parametrize("origin", [None, "http://localhost:8000", "http://evil.example"])
async def test_headers_match_starlettes(path: str, origin: str | None) -> None:
    ours = _app(Middleware(TrustedOriginsCORS, origins=OriginPolicy((), HOSTS)))
    headers = {} if origin is None else {"Origin": origin}
    answers: list[list[tuple[str, Any]]] = []
    for app in (ours, _app(_starlettes())):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            r = await c.post(path, json={}, headers=headers)
        assert r.status_code == 200
        answers.append(sorted(r.headers.multi_items()))
    assert answers[0] == answers[1]
    if origin is None:
        assert dict(answers[0])["vary"].endswith("Origin")
