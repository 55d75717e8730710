"""Server events and their ND-JSON framing.

Every server message, on the WebSocket and in a streamed ``/v1/execute`` answer, is one JSON
object followed by ``\\n``. The event types are ``session``, ``reasoning``, ``token``,
``result`` and ``error``; every event names its ``request_id`` so that several requests can share
one connection.
"""

from __future__ import annotations

import json
from typing import Any

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.usage import FinishReason, Timings, Usage

Event = dict[str, Any]


def usage_json(usage: Usage) -> dict[str, int]:
    """The native protocol's form of :class:`Usage` (``cached_tokens`` flat beside the counts)."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": usage.cached_tokens,
    }


def timings_json(timings: Timings) -> dict[str, float | int | None]:
    """The native protocol's form of :class:`Timings`, rounded for humans."""

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return {
        "queue_ms": r(timings.queue_ms),
        "ttft_ms": r(timings.ttft_ms),
        "tokens_per_second": r(timings.tokens_per_second),
        "total_ms": r(timings.total_ms),
        "draft_tokens": timings.draft_tokens,
        "accepted_tokens": timings.accepted_tokens,
    }


def session_event(
    session_id: str,
    request_id: str,
    *,
    new: bool,
    turns: int,
    stateless: bool = False,
    model: str | None = None,
) -> Event:
    """Opens every request's event stream: the session the request runs in, whether this
    request started it, how many earlier turns it has, and whether it is stateless (then the
    id only correlates the events: nothing is stored under it)."""
    return {
        "type": "session",
        "session_id": session_id,
        "request_id": request_id,
        "new": new,
        "turns": turns,
        "stateless": stateless,
        **({"model": model} if model is not None else {}),
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
    model: str | None = None,
) -> Event:
    """The final event of a successful (or cancelled) request; ``model`` is the model that
    answered."""
    return {
        "type": "result",
        "status": "success",
        "content": content,
        "origin": "local",
        "session_id": session_id,
        "request_id": request_id,
        "finish_reason": finish_reason,
        "usage": usage_json(usage),
        "timings": timings_json(timings),
        **({"model": model} if model is not None else {}),
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
