"""The JSON routes' own short ASGI stack: ``POST`` to a :class:`~.json_route.JsonRoute` runs
through the app's middlewares (the same classes, built with the same arguments) straight to
the route, without FastAPI's and Starlette's own layers (server-error, telemetry, body-limit,
exception and exit-stack middlewares, the router). Those cost ~0.1 ms of CPU per request,
measured in-process with the embedding engine's decodes between requests: 2-3% of a
one-sentence embedding request (docs/PERFORMANCE.md, "Embeddings").

What those layers did for these routes is done here: the route is put in the scope (the
HTTP metrics label by its path) and what the route raises before it answers goes to the
app's exception handlers, looked up as Starlette does (an ``HTTPException``'s status first,
then the exception's classes in order). The catch-all ``Exception`` handler answers 500 and
the exception is raised on to the server, as Starlette's server-error middleware does.

Every other request (another method, a ``root_path``, another path) takes the app's full
stack, where the JSON routes are also mounted.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _Endpoint:
    """The end of the short stack: the route, its errors to the app's handlers."""

    def __init__(self, routes: dict[str, Route], handlers: dict[Any, Any]) -> None:
        self.routes = routes
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.routes[scope["path"]].app(scope, receive, sender)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None or started:
                raise
            response = handler(Request(scope, receive), exc)
            if inspect.isawaitable(response):
                response = await response
            if response is not None:
                await response(scope, receive, sender)
            if Exception in self.handlers and handler is self.handlers[Exception]:
                raise  # answered 500; the server logs it, as after Starlette's handler
            exc.__traceback__ = None

    def _handler(self, exc: Exception) -> Any:
        if isinstance(exc, HTTPException) and exc.status_code in self.handlers:
            return self.handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in self.handlers:
                return self.handlers[cls]
        return None


class JsonStack:
    """An ASGI app: ``POST`` to one of ``routes`` (with no ``root_path``) through
    ``middleware`` to its route; anything else to ``full`` (the app's own stack)."""

    def __init__(
        self,
        full: ASGIApp,
        routes: Iterable[Route],
        middleware: Iterable[Middleware],
        handlers: dict[Any, Any],
    ) -> None:
        """``middleware``: outermost first, as ``app.user_middleware`` lists them."""
        self.full = full
        self.routes = {route.path: route for route in routes}
        short: ASGIApp = _Endpoint(self.routes, dict(handlers))
        for cls, args, kwargs in reversed(list(middleware)):
            short = cls(short, *args, **kwargs)
        self.short = short

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and not scope.get("root_path")
            and (route := self.routes.get(scope["path"])) is not None
        ):
            scope["route"] = route
            await self.short(scope, receive, send)
            return
        await self.full(scope, receive, send)
