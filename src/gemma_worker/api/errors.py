"""Error responses: every failure is a JSON body with a code; nothing internal leaks."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from gemma_worker.api.anthropic.errors import (
    anthropic_error_body,
    anthropic_status,
    is_anthropic_path,
)
from gemma_worker.api.ollama.errors import is_ollama_path, ollama_error_body, ollama_status
from gemma_worker.api.openai.errors import is_openai_path, openai_error_body, openai_status
from gemma_worker.core import events as ev
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.ids import new_id
from gemma_worker.core.request import describe_errors

log = logging.getLogger(__name__)


_RETRY_CODES = {ErrorCode.OVERLOADED, ErrorCode.SESSION_BUSY, ErrorCode.RATE_LIMITED}


def error_response(
    request: Request, exc: WorkerError, request_id: str | None = None
) -> JSONResponse:
    """The REST form of a :class:`WorkerError`, counted in the app's metrics. 503, 409 and
    429 carry ``Retry-After``; 429 also the ``RateLimit-Limit/Remaining/Reset`` headers."""
    _count(request, exc.code)
    return response_for(request.url.path, exc, request_id)


def response_for(path: str, exc: WorkerError, request_id: str | None = None) -> JSONResponse:
    """The REST form of ``exc`` for a request to ``path`` (uncounted: see error_response)."""
    headers = {}
    if exc.code in _RETRY_CODES:
        headers["Retry-After"] = str(exc.details.get("retry_after", 1))
    if exc.code is ErrorCode.RATE_LIMITED:
        for name in ("limit", "remaining", "reset"):
            if name in exc.details:
                headers[f"RateLimit-{name.capitalize()}"] = str(exc.details[name])
    status, body = dialect_error(path, exc, request_id=request_id)
    return JSONResponse(body, status_code=status, headers=headers)


def internal_error(what: str, **context: object) -> WorkerError:
    """Log the exception being handled under a new error id (with ``context``) and return the
    generic ``INTERNAL_ERROR`` a client may see: only that id, none of the details."""
    error_id = new_id()
    log.exception(what, extra={"error_id": error_id, **context})
    return WorkerError(
        ErrorCode.INTERNAL_ERROR, f"internal error (id {error_id})", error_id=error_id
    )


def dialect_error(
    path: str, exc: WorkerError, status: int | None = None, request_id: str | None = None
) -> tuple[int, dict[str, Any]]:
    """The status and body of ``exc`` in the API dialect of ``path`` (``status`` overrides the
    dialect's choice): OpenAI's, Anthropic's, Ollama's, or the native protocol's."""
    if is_anthropic_path(path):
        return status or anthropic_status(exc), anthropic_error_body(exc, status)
    if is_openai_path(path):
        return status or openai_status(exc), openai_error_body(exc, status)
    if is_ollama_path(path):
        return status or ollama_status(exc), ollama_error_body(exc)
    body = ev.error_body(exc.code, exc.message, request_id=request_id, **exc.details)
    return status or exc.http_status, body


async def send_error(
    send: Send, path: str, exc: WorkerError, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answer a request for ``path`` with ``exc`` as a JSON error straight from ASGI
    middleware (before routing), in the shape of the path's API dialect."""
    status, payload = dialect_error(path, exc)
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _count(request: Request, code: ErrorCode) -> None:
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.metrics.error(str(code))


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(
            request, WorkerError(ErrorCode.INVALID_JSON, "body is not valid JSON")
        )
    if any(tuple(e.get("loc", ())) == ("body",) and e.get("type") != "value_error" for e in errors):
        return error_response(
            request, WorkerError(ErrorCode.INVALID_JSON, "body must be a JSON object")
        )
    first = errors[0].get("loc", ()) if errors else ()
    param = ".".join(str(p) for p in first if p != "body") or None
    return error_response(
        request, WorkerError(ErrorCode.INVALID_REQUEST, describe_errors(errors), param=param)
    )


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = ErrorCode.INVALID_REQUEST
    _count(request, code)
    error = WorkerError(code, str(exc.detail))
    status, body = dialect_error(request.url.path, error, exc.status_code)
    return JSONResponse(body, status_code=status, headers=exc.headers)


async def _worker_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, WorkerError)
    return error_response(request, exc)


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    error = internal_error("unexpected error", path=request.url.path)
    _count(request, error.code)
    return response_for(request.url.path, error)


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(WorkerError, _worker_error_handler)
    app.add_exception_handler(Exception, _unexpected_handler)


__all__ = ["error_response", "install_error_handlers", "internal_error", "send_error"]
