"""``POST /v1/execute``: one generation as a JSON answer, or the WebSocket's events as an
ND-JSON stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gemma_worker.api.auth import client_identity, principal_of
from gemma_worker.api.deps import State
from gemma_worker.api.disconnect import first_decisive, unless_disconnected
from gemma_worker.api.errors import error_response, internal_error
from gemma_worker.api.house.generation import (
    HouseGeneration,
    house_events,
    start_house_generation,
    turn_events,
)
from gemma_worker.api.schemas import ERROR_RESPONSES, ExecuteResponse, TimingsBody, UsageBody
from gemma_worker.api.stall import guarded_stream
from gemma_worker.api.state import WorkerState
from gemma_worker.core import events as ev
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.request import GenerationRequest, route_session
from gemma_worker.engine.messages import Failed, Finished, Text

router = APIRouter()

NDJSON = "application/x-ndjson"

#: The header a balancer routes on; a body without ``session_id`` continues that session.
SESSION_HEADER = "x-session-id"


def client_left() -> JSONResponse:
    """What a request whose client has left "answers" (nobody reads it; logs show 499)."""
    return JSONResponse(
        ev.error_body(ErrorCode.INFERENCE_ERROR, "client disconnected"), status_code=499
    )


@router.post(
    "/v1/execute",
    response_model=ExecuteResponse,
    responses={
        **ERROR_RESPONSES,
        200: {
            "description": "JSON result, or with stream=true an ND-JSON event stream",
            "content": {NDJSON: {}},
        },
    },
    summary="Generate text (sync JSON or ND-JSON stream)",
)
async def execute(body: GenerationRequest, request: Request, state: State) -> Any:
    """Run one generation. With ``"stream": true`` the answer is ``application/x-ndjson`` with
    the WebSocket's events (``session``, ``reasoning``, ``token``..., ``result``/``error``).

    An ``X-Session-Id`` header (what a balancer routes on) names the session when the body
    does not; a body that names another session gets 422."""
    try:
        body = route_session(body, request.headers.get(SESSION_HEADER), "the X-Session-Id header")
        hg = await start_house_generation(
            state,
            body,
            owner=principal_of(request.scope),
            identity=client_identity(request.scope),
            transport="rest",
        )
    except WorkerError as exc:
        return error_response(request, exc, body.request_id)
    if body.stream:
        return await _stream(hg, state, request)
    return await _collect(hg, state, request)


async def _stream(hg: HouseGeneration, state: WorkerState, request: Request) -> Any:
    # Rejections found by the engine (CONTEXT_OVERFLOW...) still get their HTTP status, so the
    # response starts with the first decisive event; a client that leaves while the request
    # waits for a slot frees it (and its session) at once.
    head = await first_decisive(hg.gen, request)
    if head is None:
        return client_left()
    taken, rest = head
    if isinstance(taken[-1], Failed):
        await rest.aclose()
        hg.gen.close()
        return error_response(request, taken[-1].error, hg.request_id)

    async def lines() -> AsyncIterator[str]:
        try:
            async with contextlib.aclosing(house_events(state, hg, taken, rest)) as events:
                async for event in events:
                    if event["type"] == "error":
                        state.metrics.error(event["code"])
                    yield ev.frame(event)
        except Exception:  # the status line has gone out: the fault is the last event
            error = internal_error("unexpected error in a stream", request_id=hg.request_id)
            state.metrics.error(error.code)
            yield ev.frame(ev.error_event(error, hg.request_id))

    return guarded_stream(
        lines(),
        media_type=NDJSON,
        stall_timeout=state.settings.stream_stall_timeout_seconds,
        metrics=state.metrics,
        stall_record=lambda error: ev.frame(ev.error_event(error, hg.request_id)),
    )


async def _collect(hg: HouseGeneration, state: WorkerState, request: Request) -> Any:
    async def run() -> tuple[str, Finished | Failed]:
        parts: list[str] = []
        async with contextlib.aclosing(turn_events(state, hg)) as events:
            async for event in events:
                if isinstance(event, Text):
                    parts.append(event.text)
                elif isinstance(event, Finished | Failed):
                    return "".join(parts), event
        raise AssertionError("a generation ended without a final event")

    runner = asyncio.ensure_future(run())
    if not await unless_disconnected(request, runner):  # the client went away
        return client_left()
    content, final = runner.result()
    if isinstance(final, Failed):
        return error_response(request, final.error, hg.request_id)
    usage, timings = final.usage, final.timings
    return ExecuteResponse(
        result=content,
        session_id=hg.session_id,
        request_id=hg.request_id,
        finish_reason=final.finish_reason,
        usage=UsageBody.model_validate(ev.usage_json(usage)),
        timings=TimingsBody.model_validate(ev.timings_json(timings)),
        inference_time_ms=timings.total_ms,
    )
