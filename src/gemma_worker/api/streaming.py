"""A generation's REST answer in any dialect: collected whole, or streamed as it comes.

The dialect supplies how to encode events and errors; this module owns the rest: cancelling
when the client leaves, answering an error found before the first byte with its status, and
ending a broken stream with one error record.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from gemma_worker.api.auth import client_identity, principal_of
from gemma_worker.api.disconnect import first_decisive, replay, unless_disconnected
from gemma_worker.api.errors import error_response, internal_error
from gemma_worker.api.stall import guarded_stream
from gemma_worker.api.state import WorkerState
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.request import SamplingParams, new_id
from gemma_worker.engine.grammar import Grammar
from gemma_worker.engine.job import GenerationSpec
from gemma_worker.engine.messages import Failed, Finished
from gemma_worker.engine.prompt import Prompt
from gemma_worker.service.generation import Generation, GenerationEvent, start_generation

#: What a generation cancelled by the drain answers (it is an error in the REST dialects).
_CANCELLED = WorkerError(
    ErrorCode.OVERLOADED, "the generation was cancelled: the worker is shutting down", retry_after=5
)


async def start_rest_generation(
    state: WorkerState,
    request: Request,
    prompt: Prompt,
    params: SamplingParams,
    *,
    grammar: Grammar | None,
    transport: str,
    tools: bool = False,
    top_logprobs: int | None = None,
) -> Generation:
    """Admit and submit a dialect's REST request: a new request id, the caller's key as its
    cache scope, its key or address for rate limits (see :func:`start_generation`)."""
    spec = GenerationSpec(
        request_id=new_id(),
        prompt=prompt,
        params=params,
        scope=principal_of(request.scope),
        grammar=grammar,
        top_logprobs=top_logprobs,
    )
    return await start_generation(
        state, spec, identity=client_identity(request.scope), transport=transport, tools=tools
    )


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
            gen.close()

    runner = asyncio.ensure_future(run())
    if not await unless_disconnected(request, runner):
        return _client_left()
    return runner.result()


async def answer_whole(
    gen: Generation,
    request: Request,
    on_event: Callable[[GenerationEvent], object],
    respond: Callable[[Finished], Any],
) -> Any:
    """The whole answer: :func:`_collect`, then ``respond(finished)``, or the error response
    of a failed or cancelled generation."""
    final = await _collect(gen, request, on_event)
    if isinstance(final, Response):
        return final
    failed = _failure_of(final)
    if failed is not None:
        return error_response(request, failed)
    assert isinstance(final, Finished)
    return respond(final)


def _failure_of(final: Finished | Failed) -> WorkerError | None:
    """The error a final event stands for in a REST answer (a cancel is one), else ``None``."""
    if isinstance(final, Failed):
        return final.error
    return _CANCELLED if final.finish_reason == "cancelled" else None


@dataclass(frozen=True)
class StreamFormat:
    """How a dialect writes a stream: ``encode`` turns an event into records (``Finished``
    included; never a cancelled one), ``error`` writes the one record a broken stream ends
    with, ``done`` is a last record after success (SSE's ``[DONE]``)."""

    encode: Callable[[GenerationEvent], list[str]]
    error: Callable[[WorkerError], str]
    media_type: str
    done: str | None = None


_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def stream(
    gen: Generation, request: Request, state: WorkerState, fmt: StreamFormat
) -> Response:
    """Stream ``gen``: an error before its first event is answered with its status; one after
    it ends the stream as ``fmt.error``; the client leaving cancels the generation."""
    head = await first_decisive(gen, request)
    if head is None:
        return _client_left()
    taken, rest = head
    if isinstance(taken[-1], Failed):
        await rest.aclose()
        gen.close()
        return error_response(request, taken[-1].error)

    async def body() -> AsyncIterator[str]:
        try:
            async with contextlib.aclosing(replay(taken, rest)) as events:
                async for event in events:
                    failed = _failure_of(event) if isinstance(event, Finished | Failed) else None
                    if failed is not None:
                        state.metrics.error(str(failed.code))
                        yield fmt.error(failed)
                        return
                    for record in fmt.encode(event):
                        yield record
            if fmt.done is not None:
                yield fmt.done
        except Exception:  # the status line has gone out: the fault is the last record
            error = internal_error("unexpected error in a stream", request_id=gen.request_id)
            state.metrics.error(str(error.code))
            yield fmt.error(error)
        finally:
            gen.close()

    return guarded_stream(
        body(),
        media_type=fmt.media_type,
        headers=_HEADERS,
        stall_timeout=state.settings.stream_stall_timeout_seconds,
        metrics=state.metrics,
        stall_record=fmt.error,
    )
