"""A route's JSON body read and validated in one pydantic-core pass, for the routes where
FastAPI's own body and dependency machinery is a measurable share of a request (embeddings:
a few milliseconds each, see docs/PERFORMANCE.md).

The rules are FastAPI's, so a client cannot tell the difference: only a JSON content type
(``application/json`` or ``application/*+json``) is read as JSON (a cross-site form post is
not: it needs no CORS preflight); an empty or non-JSON body is "not a JSON object"; every
failure is a :class:`RequestValidationError` whose locations start with ``"body"``, answered
by the app's one validation handler in the path's dialect. The JSON is parsed by the standard
library as FastAPI does: it keeps a lone surrogate escape for the pipeline to refuse naming its
field, where a stricter parser refuses the whole body.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

Body = TypeVar("Body", bound=BaseModel)

_NOT_AN_OBJECT = {"type": "model_attributes_type", "loc": ("body",), "msg": "not a JSON object"}


def is_json_type(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` names JSON (parameters such as ``charset`` aside)."""
    if not content_type:
        return False
    kind = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = kind.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


async def read_body(request: Request, model: type[Body]) -> Body:
    """The request's body as ``model``; :class:`RequestValidationError` otherwise."""
    raw = await request.body()
    if not raw or not is_json_type(request.headers.get("content-type")):
        raise RequestValidationError([_NOT_AN_OBJECT])
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        pos = exc.pos if isinstance(exc, json.JSONDecodeError) else exc.start
        error = {"type": "json_invalid", "loc": ("body", pos), "msg": "JSON decode error"}
        raise RequestValidationError([error]) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as the route's required JSON body (a model
    without nested models: its schema needs no shared definitions)."""
    schema = model.model_json_schema()
    assert "$defs" not in schema, f"{model.__name__} has nested models"
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }
