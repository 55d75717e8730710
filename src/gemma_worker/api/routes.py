"""REST routes: ``/``, ``/health``, ``/ready``, ``POST /v1/execute``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from gemma_worker import __version__
from gemma_worker.api.auth import client_identity, principal_of
from gemma_worker.api.deps import State
from gemma_worker.api.errors import error_response, internal_error
from gemma_worker.api.generation import Generation, protocol_events, start_generation
from gemma_worker.api.schemas import (
    ERROR_RESPONSES,
    ExecuteResponse,
    HealthResponse,
    ReadyResponse,
)
from gemma_worker.api.state import Phase, WorkerState
from gemma_worker.core import events as ev
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.request import GenerationRequest
from gemma_worker.engine.messages import EngineEvent, Failed, Queued, Started, Trimmed
from gemma_worker.engine.protocol import EngineState

log = logging.getLogger(__name__)

router = APIRouter()

NDJSON = "application/x-ndjson"


@router.get("/", summary="Service information")
async def info(state: State) -> dict[str, Any]:
    """Name, version, model and endpoints."""
    model = state.engine.info
    return {
        "name": "FazAI Gemma Worker",
        "version": __version__,
        "status": state.phase.value,
        "model": None if model is None else model.to_dict(),
        "endpoints": {
            "health": "GET /health",
            "ready": "GET /ready",
            "execute": "POST /v1/execute",
            "sessions": "GET /v1/sessions, GET|DELETE /v1/sessions/{id}",
            "websocket": "WS /ws",
            "docs": "GET /docs",
            "openapi": "GET /openapi.json",
        },
    }


@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> HealthResponse:
    """200 while the process runs."""
    return HealthResponse(version=__version__)


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse}},
    summary="Readiness",
)
async def ready(state: State) -> JSONResponse:
    """200 once the model is loaded; 503 while loading, after a failed load, or draining."""
    model = state.engine.info
    phase = state.phase
    if phase is Phase.READY and state.engine.state is not EngineState.READY:
        phase = Phase.FAILED  # the engine stopped after loading
    body = ReadyResponse(status=phase.value, model_loaded=model is not None)
    if phase is Phase.READY and model is not None:
        stats = state.engine.stats()
        path = getattr(state.engine, "model_path", None)
        body = ReadyResponse(
            status="ready",
            model_loaded=True,
            # only the file name: /ready answers without a key, directories are nobody's business
            model_file=None if path is None else Path(path).name,
            model=model.to_dict(),
            slots=stats.slots,
            active=stats.active,
            queued=stats.queued,
        )
        return JSONResponse(body.model_dump())
    return JSONResponse(body.model_dump(exclude_none=True), status_code=503)


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Request, task: asyncio.Future[Any]) -> bool:
    """Wait for ``task`` or the client to leave; whether ``task`` finished. If the client left
    first, ``task`` is cancelled (and awaited)."""
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def _client_left() -> JSONResponse:
    """What a request whose client has left "answers" (nobody reads it; logs show 499)."""
    return JSONResponse(
        ev.error_body(ErrorCode.INFERENCE_ERROR, "client disconnected"), status_code=499
    )


async def _first_decisive(gen: Generation) -> list[EngineEvent]:
    """Engine events up to the first that is not queue/prompt progress."""
    taken: list[EngineEvent] = []
    while True:
        event = await gen.handle.next_event()
        taken.append(event)
        if not isinstance(event, Queued | Started | Trimmed):
            return taken


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
    the WebSocket's events (``session``, ``reasoning``, ``token``..., ``result``/``error``)."""
    try:
        gen = await start_generation(
            state,
            body,
            owner=principal_of(request.scope),
            identity=client_identity(request.scope),
            transport="rest",
        )
    except WorkerError as exc:
        return error_response(request, exc, body.request_id)
    if body.stream:
        return await _stream(gen, state, request)
    return await _collect(gen, state, request)


async def _stream(gen: Generation, state: WorkerState, request: Request) -> Any:
    # Rejections found by the engine (CONTEXT_OVERFLOW...) still get their HTTP status, so the
    # response starts with the first decisive event; a client that leaves while the request
    # waits for a slot frees it (and its session) at once.
    head_task = asyncio.ensure_future(_first_decisive(gen))
    try:
        finished = await _unless_disconnected(request, head_task)
    except asyncio.CancelledError:
        head_task.cancel()
        gen.handle.cancel()
        gen.release()
        raise
    if not finished:
        gen.handle.cancel()
        gen.release()
        return _client_left()
    head = head_task.result()
    if isinstance(head[-1], Failed):
        gen.release()
        return error_response(request, head[-1].error, gen.request_id)

    async def lines() -> AsyncIterator[str]:
        try:
            async with contextlib.aclosing(protocol_events(state, gen, head)) as events:
                async for event in events:
                    if event["type"] == "error":
                        state.metrics.error(event["code"])
                    yield ev.frame(event)
        except Exception:  # the status line has gone out: the fault is the last event
            error = internal_error("unexpected error in a stream", request_id=gen.request_id)
            state.metrics.error(error.code)
            yield ev.frame(ev.error_event(error, gen.request_id))

    return StreamingResponse(lines(), media_type=NDJSON)


async def _collect(gen: Generation, state: WorkerState, request: Request) -> Any:
    async def run() -> ev.Event:
        final: ev.Event = {}
        async with contextlib.aclosing(protocol_events(state, gen)) as events:
            async for event in events:
                final = event
        return final

    runner = asyncio.create_task(run())
    if not await _unless_disconnected(request, runner):  # the client went away
        gen.handle.cancel()
        return _client_left()
    final = runner.result()
    if final.get("type") == "error":
        return error_response(
            request,
            WorkerError(ErrorCode(final["code"]), final["error"], **_details(final)),
            gen.request_id,
        )
    return ExecuteResponse(
        result=final["content"],
        session_id=final["session_id"],
        request_id=final["request_id"],
        finish_reason=final["finish_reason"],
        usage=final["usage"],
        timings=final["timings"],
        inference_time_ms=final["timings"]["total_ms"],
    )


def _details(event: ev.Event) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in {"type", "error", "code", "request_id"}}
