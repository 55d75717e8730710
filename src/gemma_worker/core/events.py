"""Server events and their ND-JSON framing.

Every server message, on the WebSocket and in a streamed ``/v1/execute`` answer, is one JSON
object followed by ``\\n``. The event types are ``session``, ``reasoning``, ``token``,
``result`` and ``error``; every event names its ``request_id`` so that several requests can share
one connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from gemma_worker.core.errors import ErrorCode, WorkerError

FinishReason = Literal["stop", "length", "cancelled"]

Event = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one generation; ``cached_tokens`` of the prompt were reused from the
    session's KV cache instead of being processed again."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON form, with ``total_tokens`` added."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cached_tokens": self.cached_tokens,
        }


@dataclass(frozen=True, slots=True)
class Timings:
    """Latency figures of one generation, in milliseconds (tokens/s for the rate)."""

    queue_ms: float
    ttft_ms: float | None
    tokens_per_second: float | None
    total_ms: float

    def to_dict(self) -> dict[str, float | None]:
        """JSON form, rounded for humans."""
        return {
            "queue_ms": round(self.queue_ms, 2),
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 2),
            "tokens_per_second": (
                None if self.tokens_per_second is None else round(self.tokens_per_second, 2)
            ),
            "total_ms": round(self.total_ms, 2),
        }


def session_event(session_id: str, request_id: str, *, new: bool, turns: int) -> Event:
    """Opens every request's event stream: the session the request runs in, whether this
    request started it, and how many earlier turns it has."""
    return {
        "type": "session",
        "session_id": session_id,
        "request_id": request_id,
        "new": new,
        "turns": turns,
    }


def reasoning_event(request_id: str, content: str, **fields: Any) -> Event:
    """A progress note (queue position, prompt processing); not part of the answer."""
    return {"type": "reasoning", "request_id": request_id, "content": content, **fields}


def token_event(request_id: str, content: str) -> Event:
    """One piece of generated text, sent as soon as it exists."""
    return {"type": "token", "request_id": request_id, "content": content}


def result_event(
    *,
    request_id: str,
    session_id: str,
    content: str,
    finish_reason: FinishReason,
    usage: Usage,
    timings: Timings,
) -> Event:
    """The final event of a successful (or cancelled) request."""
    return {
        "type": "result",
        "status": "success",
        "content": content,
        "origin": "local",
        "session_id": session_id,
        "request_id": request_id,
        "finish_reason": finish_reason,
        "usage": usage.to_dict(),
        "timings": timings.to_dict(),
    }


def error_event(error: WorkerError, request_id: str | None) -> Event:
    """The final event of a failed request, or the answer to a bad message."""
    return {
        "type": "error",
        "error": error.message,
        "code": str(error.code),
        "request_id": request_id,
        **error.details,
    }


def error_body(code: ErrorCode, message: str, **details: Any) -> dict[str, Any]:
    """REST error body: ``{"status": "error", "error": ..., "code": ...}``."""
    return {"status": "error", "error": message, "code": str(code), **details}


def frame(event: Event) -> str:
    """One ND-JSON line."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"
