"""Error codes shared by the WebSocket protocol and the REST API."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Machine-readable error codes carried by ``error`` events and REST error bodies."""

    INVALID_JSON = "INVALID_JSON"
    INVALID_REQUEST = "INVALID_REQUEST"
    CONTEXT_OVERFLOW = "CONTEXT_OVERFLOW"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    SESSION_BUSY = "SESSION_BUSY"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    MODEL_MISMATCH = "MODEL_MISMATCH"
    MODEL_TOO_LARGE = "MODEL_TOO_LARGE"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    FORBIDDEN = "FORBIDDEN"
    UNAUTHORIZED = "UNAUTHORIZED"
    HOST_NOT_ALLOWED = "HOST_NOT_ALLOWED"
    RATE_LIMITED = "RATE_LIMITED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    STREAM_STALLED = "STREAM_STALLED"
    OVERLOADED = "OVERLOADED"
    INFERENCE_ERROR = "INFERENCE_ERROR"
    INTERNAL_ERROR = "INTERNAL_ERROR"


#: HTTP status for each code when it ends a REST request.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_REQUEST: 422,
    ErrorCode.CONTEXT_OVERFLOW: 400,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.SESSION_BUSY: 409,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.MODEL_MISMATCH: 409,
    ErrorCode.MODEL_TOO_LARGE: 507,
    ErrorCode.MODEL_LOAD_FAILED: 500,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.HOST_NOT_ALLOWED: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.STREAM_STALLED: 408,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.INFERENCE_ERROR: 500,
    ErrorCode.INTERNAL_ERROR: 500,
}


class WorkerError(Exception):
    """An error that is reported to the client as ``{error, code}``.

    ``message`` must be safe to show: no file paths, stack traces or addresses.
    ``details`` holds extra JSON-safe fields (e.g. ``n_prompt_tokens``).
    """

    def __init__(self, code: ErrorCode, message: str, **details: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @property
    def http_status(self) -> int:
        """The HTTP status that matches :attr:`code`."""
        return HTTP_STATUS[self.code]
