"""The JSON routes' own short ASGI stack: ``POST`` to a :class:`~.json_route.JsonRoute` runs
through the app's middlewares (the same classes, built with the same arguments) straight to
the route, without most of FastAPI's and Starlette's own layers (telemetry, body-limit,
exception and exit-stack middlewares, the router). Those cost ~0.1 ms of CPU per request,
measured in-process with the embedding engine's decodes between requests: 2-3% of a
one-sentence embedding request (docs/PERFORMANCE.md, "Embeddings").

What those layers did for these routes is done here, with Starlette's own pieces placed as
FastAPI places them: the route is put in the scope once the middlewares let the request
through (the HTTP metrics label by its path; a refused request stays "unmatched"); what the
route raises goes to Starlette's exception middleware inside the app's middlewares, with the
app's exception handlers; anything else, from the route or a middleware, to its server-error
middleware outside them all, with the app's catch-all handler (a 500 in the path's dialect,
the exception raised on to the server, which logs it).

Every other request (another method, a ``root_path``, another path) takes the app's full
stack, where the JSON routes are also mounted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send


class _Endpoint:
    """The end of the short stack: the route of the request's path, named in the scope."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes[scope["path"]]
        scope["route"] = route
        await route.app(scope, receive, send)


class JsonStack:
    """An ASGI app: ``POST`` to one of ``routes`` (with no ``root_path``) through
    ``middleware`` to its route; anything else to ``full`` (the app's own stack)."""

    def __init__(
        self,
        full: ASGIApp,
        routes: Iterable[Route],
        middleware: Iterable[Middleware],
        handlers: dict[Any, Any],
        *,
        debug: bool = False,
    ) -> None:
        """``middleware``: outermost first, as ``app.user_middleware`` lists them;
        ``handlers``: the app's exception handlers (``500`` or ``Exception``: the catch-all)."""
        self.full = full
        self.app = full  # FastAPI walks ``.app`` looking for OpenTelemetry's middleware
        self.routes = {route.path: route for route in routes}
        catch_all = handlers.get(500) or handlers.get(Exception)
        specific = {k: v for k, v in handlers.items() if k not in (500, Exception)}
        short: ASGIApp = ExceptionMiddleware(_Endpoint(self.routes), specific, debug=debug)
        for cls, args, kwargs in reversed(list(middleware)):
            short = cls(short, *args, **kwargs)
        self.short = ServerErrorMiddleware(short, handler=catch_all, debug=debug)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and not scope.get("root_path")
            and scope["path"] in self.routes
        ):
            await self.short(scope, receive, send)
            return
        await self.full(scope, receive, send)
