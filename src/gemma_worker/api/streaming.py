"""A generation's REST answer in any dialect: collected whole, or streamed as it comes.

The dialect supplies how to encode events and errors; this module owns the rest: cancelling
when the client leaves, answering an error found before the first byte with its status, and
ending a broken stream with one error record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from gemma_worker.api.disconnect import first_decisive, replay, unless_disconnected
from gemma_worker.api.errors import error_response, internal_error
from gemma_worker.api.stall import guarded_stream
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.engine.messages import Failed, Finished
from gemma_worker.runtime.generation import Generation, GenerationEvent
from gemma_worker.runtime.state import WorkerState

_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

#: What a generation cancelled by the drain answers (it is an error in the REST dialects).
_CANCELLED = WorkerError(
    ErrorCode.OVERLOADED, "the generation was cancelled: the worker is shutting down", retry_after=5
)


def named_sse(event: dict[str, Any]) -> str:
    """One server-sent event named by the object's ``type`` (Anthropic's and the Responses
    API's streams)."""
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n"


def _client_left() -> Response:
    """What a request whose client has left "answers" (nobody reads it; logs show 499)."""
    return JSONResponse({"error": _CANCELLED.message}, status_code=499)


async def _collect(
    gen: Generation, request: Request, on_event: Callable[[GenerationEvent], object]
) -> Finished | Failed | Response:
    """Run ``gen`` to its end, passing each event before the last to ``on_event``; its final
    event, or the response for a client that left."""

    async def run() -> Finished | Failed:
        events = gen.events()
        try:
            async for event in events:
                if isinstance(event, Finished | Failed):
                    return event
                on_event(event)
            raise AssertionError("a generation ended without a final event")
        finally:
            await events.aclose()
            gen.release()

    runner = asyncio.ensure_future(run())
    if not await unless_disconnected(request, runner):
        return _client_left()
    return runner.result()


async def answer_whole(
    gen: Generation,
    request: Request,
    on_event: Callable[[GenerationEvent], object],
    respond: Callable[[Finished], Any],
    *,
    cancel_is_error: bool = True,
) -> Any:
    """The whole answer: :func:`_collect`, then ``respond(finished)``, or the error response
    of a failed generation, or of a cancelled one unless the dialect answers those
    (``cancel_is_error=False``: the native protocol's ``finish_reason: cancelled``)."""
    final = await _collect(gen, request, on_event)
    if isinstance(final, Response):
        return final
    failed = _failure_of(final, cancel_is_error)
    if failed is not None:
        return error_response(request, failed, gen.request_id)
    assert isinstance(final, Finished)
    return respond(final)


def _failure_of(final: Finished | Failed, cancel_is_error: bool = True) -> WorkerError | None:
    """The error a final event stands for in a REST answer (a cancel, unless the dialect
    answers those), else ``None``."""
    if isinstance(final, Failed):
        return final.error
    cancelled = cancel_is_error and final.finish_reason == "cancelled"
    return _CANCELLED if cancelled else None


@dataclass(frozen=True)
class StreamFormat:
    """How a dialect writes a stream: ``head`` are the records before the first event,
    ``encode`` turns an event into records (``Finished`` included; a cancelled one only with
    ``cancel_is_error=False``), ``error`` writes the one record a broken stream ends with,
    ``done`` is a last record after success (SSE's ``[DONE]``). ``before_final`` is awaited
    with the final ``Finished`` before it is encoded (a dialect that stores its answers does
    so there, so that a client acting on the last record finds it stored). ``on_close`` is
    called once the stream has ended, whichever way (its body closed)."""

    encode: Callable[[GenerationEvent], list[str]]
    error: Callable[[WorkerError], str]
    media_type: str
    done: str | None = None
    head: tuple[str, ...] = ()
    cancel_is_error: bool = True
    before_final: Callable[[Finished], Awaitable[None]] | None = None
    on_close: Callable[[], object] | None = None


async def stream(
    gen: Generation, request: Request, state: WorkerState, fmt: StreamFormat
) -> Response:
    """Stream ``gen``: an error before its first event is answered with its status; one after
    it ends the stream as ``fmt.error``; the client leaving cancels the generation."""
    head = await first_decisive(gen, request)
    if head is None:
        if fmt.on_close is not None:
            fmt.on_close()
        return _client_left()
    taken, rest = head
    if isinstance(taken[-1], Failed):
        await rest.aclose()
        gen.release()
        if fmt.on_close is not None:
            fmt.on_close()
        return error_response(request, taken[-1].error, gen.request_id)

    async def body() -> AsyncIterator[str]:
        try:
            for record in fmt.head:
                yield record
            async with contextlib.aclosing(replay(taken, rest)) as events:
                async for event in events:
                    failed = (
                        _failure_of(event, fmt.cancel_is_error)
                        if isinstance(event, Finished | Failed)
                        else None
                    )
                    if failed is not None:
                        state.metrics.error(str(failed.code))
                        yield fmt.error(failed)
                        return
                    if isinstance(event, Finished) and fmt.before_final is not None:
                        await fmt.before_final(event)
                    for record in fmt.encode(event):
                        yield record
            if fmt.done is not None:
                yield fmt.done
        except Exception:  # the status line has gone out: the fault is the last record
            error = internal_error("unexpected error in a stream", request_id=gen.request_id)
            state.metrics.error(str(error.code))
            yield fmt.error(error)
        finally:
            gen.release()
            if fmt.on_close is not None:
                fmt.on_close()

    return guarded_stream(
        body(),
        media_type=fmt.media_type,
        headers=_HEADERS,
        stall_timeout=state.settings.stream_stall_timeout_seconds,
        metrics=state.metrics,
        stall_record=fmt.error,
    )
