"""``POST /v1/execute``: one generation as a JSON answer, or the WebSocket's events as an
ND-JSON stream."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gemma_worker.api.auth import caller_of
from gemma_worker.api.deps import State
from gemma_worker.api.errors import error_response
from gemma_worker.api.native.encode import NativeEncoder
from gemma_worker.api.native.request import to_request
from gemma_worker.api.schemas import ERROR_RESPONSES, ExecuteResponse, TimingsBody, UsageBody
from gemma_worker.api.streaming import StreamFormat, answer_whole, stream
from gemma_worker.core import events as ev
from gemma_worker.core.errors import WorkerError
from gemma_worker.core.request import ExecuteRequest, route_session
from gemma_worker.engine.messages import Finished
from gemma_worker.runtime.generation import Generation, GenerationEvent
from gemma_worker.runtime.pipeline import start_generation
from gemma_worker.runtime.state import WorkerState

router = APIRouter()

NDJSON = "application/x-ndjson"

#: The header a balancer routes on; a body without ``session_id`` continues that session.
SESSION_HEADER = "x-session-id"


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
async def execute(body: ExecuteRequest, request: Request, state: State) -> Any:
    """Run one generation. With ``"stream": true`` the answer is ``application/x-ndjson`` with
    the WebSocket's events (``session``, ``reasoning``, ``token``..., ``result``/``error``).

    An ``X-Session-Id`` header (what a balancer routes on) names the session when the body
    does not; a body that names another session gets 422."""
    try:
        body = route_session(body, request.headers.get(SESSION_HEADER), "the X-Session-Id header")
        gen = await start_generation(
            state, to_request(body, caller_of(request.scope), transport="rest")
        )
    except WorkerError as exc:
        return error_response(request, exc, body.request_id)
    if body.stream:
        return await _stream(gen, state, request)
    return await _collect(gen, request)


async def _stream(gen: Generation, state: WorkerState, request: Request) -> Any:
    # Rejections found by the engine (CONTEXT_OVERFLOW...) still get their HTTP status, so the
    # response starts with the first decisive event; a client that leaves while the request
    # waits for a slot frees it (and its session) at once.
    encoder = NativeEncoder(gen)

    def encode(event: GenerationEvent) -> list[str]:
        out = encoder.encode(event)
        return [] if out is None else [ev.frame(out)]

    fmt = StreamFormat(
        encode=encode,
        error=lambda error: ev.frame(ev.error_event(error, gen.request_id)),
        media_type=NDJSON,
        head=(ev.frame(encoder.session()),),
        cancel_is_error=False,
    )
    return await stream(gen, request, state, fmt)


async def _collect(gen: Generation, request: Request) -> Any:
    encoder = NativeEncoder(gen)

    def respond(final: Finished) -> ExecuteResponse:
        result = encoder.encode(final)
        assert result is not None
        usage, timings = final.usage, final.timings
        return ExecuteResponse(
            result=result["content"],
            session_id=encoder.session_id,
            request_id=gen.request_id,
            model=gen.model.spec.id,
            finish_reason=final.finish_reason,
            usage=UsageBody.model_validate(ev.usage_json(usage)),
            timings=TimingsBody.model_validate(ev.timings_json(timings)),
            inference_time_ms=timings.total_ms,
        )

    return await answer_whole(gen, request, encoder.encode, respond, cancel_is_error=False)
