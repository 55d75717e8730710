"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``, with the status
codes its SDKs expect (they retry 408, 409, 429 and 5xx: a bad request must never be one)."""

from __future__ import annotations

from typing import Any

from gemma_worker.core.errors import ErrorCode, WorkerError

#: Paths that speak this dialect (their errors, even before routing, use its shape).
OPENAI_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/models",
    "/tokenize",
    "/detokenize",
)

_STATUS = {
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.CONTEXT_OVERFLOW: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.OVERLOADED: 503,
}

_TYPE = {
    ErrorCode.UNAUTHORIZED: "authentication_error",
    ErrorCode.RATE_LIMITED: "rate_limit_error",
    ErrorCode.OVERLOADED: "server_error",
    ErrorCode.INFERENCE_ERROR: "server_error",
    ErrorCode.INTERNAL_ERROR: "server_error",
}

_CODE = {
    ErrorCode.CONTEXT_OVERFLOW: "context_length_exceeded",
    ErrorCode.SESSION_NOT_FOUND: "not_found",  # a stored response (the Responses API)
    ErrorCode.UNAUTHORIZED: "invalid_api_key",
    ErrorCode.RATE_LIMITED: "rate_limit_exceeded",
}


def is_openai_path(path: str) -> bool:
    """Whether ``path`` belongs to the OpenAI dialect."""
    return path.startswith(OPENAI_PATHS)


def openai_status(exc: WorkerError) -> int:
    """The HTTP status for ``exc`` in this dialect (validation is 400, not 422)."""
    return _STATUS.get(exc.code, exc.http_status)


def openai_error(exc: WorkerError, status: int | None = None) -> dict[str, Any]:
    """The error object (the value of ``"error"``)."""
    status = status or openai_status(exc)
    param = exc.details.get("param")
    kind = _TYPE.get(exc.code, "invalid_request_error" if status < 500 else "server_error")
    if status == 404:
        kind = "invalid_request_error"
    return {
        "message": exc.message,
        "type": kind,
        "param": param if isinstance(param, str) else None,
        "code": _CODE.get(exc.code, str(exc.code).lower()),
    }


def openai_error_body(exc: WorkerError, status: int | None = None) -> dict[str, Any]:
    """``{"error": {...}}``."""
    return {"error": openai_error(exc, status)}
