"""REST response bodies, for the OpenAPI schema and ``/docs``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class UsageBody(BaseModel):
    """Token counts."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = Field(
        default=0, description="Prompt tokens reused from the session's KV cache."
    )


class TimingsBody(BaseModel):
    """Latency figures (ms) and decode rate (tokens/s)."""

    queue_ms: float
    ttft_ms: float | None
    tokens_per_second: float | None
    total_ms: float
    draft_tokens: int = Field(
        default=0, description="Speculation: tokens drafted from the context and verified."
    )
    accepted_tokens: int = Field(
        default=0, description="Draft tokens that stood (each saved a decoding step)."
    )


class ExecuteResponse(BaseModel):
    """Answer of a non-streamed ``POST /v1/execute``."""

    status: Literal["success"] = "success"
    result: str = Field(description="The generated text.")
    origin: Literal["local"] = "local"
    session_id: str
    request_id: str
    model: str = Field(description="The id of the model that answered.")
    finish_reason: Literal["stop", "length", "cancelled"]
    usage: UsageBody
    timings: TimingsBody
    inference_time_ms: float = Field(description="Wall time from submission to the last token.")


class ErrorResponse(BaseModel):
    """Every REST error: a message safe to show and a machine-readable code."""

    status: Literal["error"] = "error"
    error: str
    code: str
    request_id: str | None = None


class HealthResponse(BaseModel):
    """Liveness."""

    status: Literal["healthy"] = "healthy"
    version: str


class ReadyResponse(BaseModel):
    """Readiness: ``ready`` (200) or ``loading``/``draining``/``failed`` (503)."""

    status: Literal["ready", "loading", "draining", "failed"]
    model_loaded: bool
    model_file: str | None = Field(default=None, description="The model's file name.")
    model: dict[str, Any] | None = None
    slots: int | None = None
    active: int | None = None
    queued: int | None = None


class SessionSummary(BaseModel):
    """A session in ``GET /v1/sessions`` (times are Unix seconds)."""

    id: str
    created: float
    updated: float
    turns: int = Field(description="Finished turns (user input + answer).")
    tokens: int = Field(description="Context the last turn filled (prompt + answer tokens).")
    format: Literal["plain", "chat"]
    system: str | None = None
    model: str | None = Field(default=None, description="The model that answers the session.")
    title: str | None = Field(default=None, description="The start of the session's first message.")


class SessionList(BaseModel):
    """``GET /v1/sessions``."""

    sessions: list[SessionSummary]


class TurnBody(BaseModel):
    """One finished turn."""

    user: str
    assistant: str
    prompt_tokens: int
    completion_tokens: int


class SessionDetail(SessionSummary):
    """``GET /v1/sessions/{id}``: the session and every turn, oldest first."""

    history: list[TurnBody]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "INVALID_JSON or CONTEXT_OVERFLOW"},
    404: {"model": ErrorResponse, "description": "SESSION_NOT_FOUND"},
    409: {"model": ErrorResponse, "description": "SESSION_BUSY (with Retry-After)"},
    422: {"model": ErrorResponse, "description": "INVALID_REQUEST"},
    500: {"model": ErrorResponse, "description": "INFERENCE_ERROR / INTERNAL_ERROR"},
    503: {"model": ErrorResponse, "description": "OVERLOADED (with Retry-After)"},
}
