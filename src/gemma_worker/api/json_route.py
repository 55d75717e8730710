"""JSON ``POST`` routes as plain ASGI apps, for requests of a few milliseconds (embeddings), where
FastAPI's per-request machinery (route handling, body and dependency solving, response
classes) and the bookkeeping before the answer are a measurable share of each request
(docs/PERFORMANCE.md, "Embeddings").

A :class:`JsonRoute`'s ``POST`` runs on a short stack (:mod:`.json_stack`): the app's own
middlewares around it (Host check, keys, CORS, body limit, metrics), FastAPI's internal layers
skipped; what its handler raises before it answers (a :class:`WorkerError`, a
:class:`RequestValidationError`) is answered by the app's own exception handlers, in the
path's dialect. It also sits in the app's router, for the other methods (405). Its handler
answers with :meth:`Call.answer` and may then go on (the pipeline's accounting runs after the
client has its answer).

The body rules are FastAPI's, so a client cannot tell the difference: only a JSON content type
(``application/json`` or ``application/*+json``) is read as JSON (a cross-site form post is
not: it needs no CORS preflight); an empty or non-JSON body is "not a JSON object"; the JSON is
parsed by the standard library (a lone surrogate escape reaches the pipeline, which refuses it
naming its field, where a stricter parser refuses the whole body); every failure is a
:class:`RequestValidationError` whose locations start with ``"body"``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gemma_worker.api.asgi_headers import first_header
from gemma_worker.api.auth import caller_of
from gemma_worker.api.json_stack import JsonStack
from gemma_worker.runtime.request import Caller
from gemma_worker.runtime.state import WorkerState

log = logging.getLogger(__name__)

Body = TypeVar("Body", bound=BaseModel)

_NOT_AN_OBJECT = {"type": "model_attributes_type", "loc": ("body",), "msg": "not a JSON object"}


def is_json_type(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` names JSON (parameters such as ``charset`` aside)."""
    if not content_type:
        return False
    kind = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = kind.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def parse_body(raw: bytes, content_type: str | None, model: type[Body]) -> Body:
    """A request's body as ``model``; :class:`RequestValidationError` otherwise."""
    if not raw or not is_json_type(content_type):
        raise RequestValidationError([_NOT_AN_OBJECT])
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; nesting past the stack
        pos = exc.pos if isinstance(exc, json.JSONDecodeError) else 0
        error = {"type": "json_invalid", "loc": ("body", pos), "msg": "JSON decode error"}
        raise RequestValidationError([error]) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


class Call(Generic[Body]):
    """One request to a :class:`JsonRoute`: its validated body, the app's state, the caller,
    and the way to answer."""

    __slots__ = ("_send", "answered", "body", "scope", "state")

    def __init__(self, scope: Scope, body: Body, state: WorkerState, send: Send) -> None:
        self.scope = scope
        self.body = body
        self.state = state
        self._send = send
        #: Whether the answer has started (errors can no longer be sent).
        self.answered = False

    @property
    def caller(self) -> Caller:
        """Who asks: key id, rate-limit identity, models its key may use."""
        return caller_of(self.scope)

    async def answer(self, payload: dict[str, Any]) -> None:
        """Send ``payload`` as the 200 JSON answer (numpy arrays in it are written by orjson
        straight from their rows: thousands of floats a request)."""
        data = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        self.answered = True
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
        ]
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        await self._send({"type": "http.response.body", "body": data})


Handler = Callable[[Call[Body]], Awaitable[None]]


class JsonRoute(Generic[Body]):
    """``POST path`` with a ``model`` body, served by ``handler`` (an ASGI app; see the
    module's docstring). ``summary``, ``tag`` and the handler's docstring document it."""

    def __init__(
        self, path: str, model: type[Body], handler: Handler[Body], *, summary: str, tag: str
    ) -> None:
        self.path = path
        self.model = model
        self.handler = handler
        self.summary = summary
        self.tag = tag

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        more = True
        while more:  # BodyLimitMiddleware has read it all: one message
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        content_type = first_header(scope, b"content-type")
        body = parse_body(
            b"".join(chunks),
            None if content_type is None else content_type.decode("latin-1"),
            self.model,
        )
        call = Call(scope, body, scope["app"].state.worker, send)
        try:
            await self.handler(call)
        except Exception:
            if not call.answered:
                raise  # the app's exception handlers answer it
            log.exception("failed after answering", extra={"path": self.path})

    def route(self) -> Route:
        """The route to put in the app's router."""
        return _LabelledRoute(self.path, self, methods=["POST"], name=self.handler.__name__)

    def operation(self, components: dict[str, Any]) -> dict[str, Any]:
        """Its OpenAPI operation; the schemas of nested models go to ``components``."""
        schema = self.model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        return {
            "tags": [self.tag],
            "summary": self.summary,
            "description": (self.handler.__doc__ or "").strip(),
            "operationId": self.handler.__name__,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            },
            "responses": {
                "200": {
                    "description": "Successful Response",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }


class _LabelledRoute(Route):
    """A route that names itself in the scope (``scope["route"]``), as FastAPI's own routes
    do: the HTTP metrics label requests by its path template."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def mount(app: FastAPI, routes: Sequence[JsonRoute[Any]]) -> None:
    """Serve ``routes`` on their short stack (:mod:`.json_stack`), put them first in ``app``'s
    router (matching goes down the list: other methods get 405 there) and in its OpenAPI
    schema. Before the app's first request: its middleware stack is built then."""
    if app.middleware_stack is not None:
        raise RuntimeError("mount the JSON routes before the app's first request")
    mounted = [r.route() for r in routes]
    app.router.routes[:0] = mounted
    build_full = app.build_middleware_stack

    def build_stack() -> ASGIApp:
        full = build_full()
        return JsonStack(
            full, mounted, app.user_middleware, app.exception_handlers, debug=app.debug
        )

    app.build_middleware_stack = build_stack  # type: ignore[method-assign]
    components: dict[str, Any] = {}
    operations = {r.path: r.operation(components) for r in routes}
    make_schema = app.openapi

    def openapi() -> dict[str, Any]:
        schema = make_schema()  # FastAPI's, built once and kept
        for path, operation in operations.items():
            schema["paths"].setdefault(path, {})["post"] = operation
        schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
