"""Anthropic's error shape: ``{"type": "error", "error": {"type", "message"}}``, with the
status codes its SDKs map to their exception classes (529 for an overloaded worker)."""

from __future__ import annotations

from typing import Any

from gemma_worker.core.errors import ErrorCode, WorkerError

#: Paths that speak this dialect (their errors, even before routing, use its shape).
ANTHROPIC_PATH = "/v1/messages"

_STATUS = {
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.CONTEXT_OVERFLOW: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.OVERLOADED: 529,
}

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def is_anthropic_path(path: str) -> bool:
    """Whether ``path`` belongs to the Anthropic dialect."""
    return path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")


def anthropic_status(exc: WorkerError) -> int:
    """The HTTP status for ``exc`` in this dialect."""
    return _STATUS.get(exc.code, exc.http_status)


def anthropic_error(exc: WorkerError, status: int | None = None) -> dict[str, Any]:
    """The error object (the value of ``"error"``)."""
    status = status or anthropic_status(exc)
    kind = _TYPE_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": kind, "message": exc.message}


def anthropic_error_body(exc: WorkerError, status: int | None = None) -> dict[str, Any]:
    """``{"type": "error", "error": {...}}``."""
    return {"type": "error", "error": anthropic_error(exc, status)}
