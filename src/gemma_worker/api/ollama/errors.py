"""Ollama's error shape: ``{"error": "<message>"}``, with the status codes its clients expect
(a bad request is 400, not 422; a full queue is 503)."""

from __future__ import annotations

from typing import Any

from gemma_worker.core.errors import ErrorCode, WorkerError

#: Paths that speak this dialect (their errors, even before routing, use its shape).
OLLAMA_PATH = "/api/"

_STATUS = {
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.CONTEXT_OVERFLOW: 400,
}


def is_ollama_path(path: str) -> bool:
    """Whether ``path`` belongs to the Ollama dialect."""
    return path.startswith(OLLAMA_PATH)


def ollama_status(exc: WorkerError) -> int:
    """The HTTP status for ``exc`` in this dialect."""
    return _STATUS.get(exc.code, exc.http_status)


def ollama_error_body(exc: WorkerError) -> dict[str, Any]:
    """``{"error": message}``."""
    return {"error": exc.message}
