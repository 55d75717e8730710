"""``/v1/responses``: create (whole or streamed), retrieve, delete, cancel, count input tokens."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request

from gemma_worker.api.auth import caller_of
from gemma_worker.api.deps import State
from gemma_worker.api.errors import error_response
from gemma_worker.api.responses import records
from gemma_worker.api.responses.convert import (
    Item,
    check_response_id,
    conversation,
    function_tools,
    input_items,
    invalid,
    output,
)
from gemma_worker.api.responses.encode import ResponseEncoder
from gemma_worker.api.responses.types import ResponsesRequest
from gemma_worker.api.streaming import StreamFormat, answer_whole, named_sse, stream
from gemma_worker.core.errors import WorkerError
from gemma_worker.core.sampling import LengthRule, SamplingRequest
from gemma_worker.core.tool_stream import ToolCallArguments, ToolCallStart
from gemma_worker.engine.messages import Finished, Text
from gemma_worker.runtime.generation import GenerationEvent
from gemma_worker.runtime.pipeline import count_input_tokens, start_generation
from gemma_worker.runtime.request import GenerationRequest
from gemma_worker.runtime.state import WorkerState

log = logging.getLogger(__name__)
router = APIRouter(tags=["OpenAI-compatible"])


def _running(request: Request) -> records.Running:
    running: records.Running = request.app.state.responses_running
    return running


async def _request(
    state: WorkerState, body: ResponsesRequest, request: Request
) -> tuple[GenerationRequest, list[Item]]:
    """The neutral request, and every item of the conversation (earlier answers' first)."""
    caller = caller_of(request.scope)
    tools = function_tools(body.tools)
    items = input_items(body.input)
    if body.previous_response_id is not None:
        rid = check_response_id(body.previous_response_id, "previous_response_id")
        previous = await records.load(state.sessions.store, rid, caller.owner)
        if previous is None:  # a 400, as OpenAI answers it (a 404 is for the id in a path)
            raise invalid("previous_response_id", f"no response '{rid}' (expired, or not stored)")
        items = previous.items + items
    req = GenerationRequest(
        input=conversation(body.instructions, items),
        sampling=SamplingRequest(
            max_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            length=LengthRule(param="max_output_tokens", unset="context"),
        ),
        caller=caller,
        transport="responses",
        output=output(body, tools),
        model=body.model,
        trim_history=body.truncation == "auto",
        n_messages=len(items),
    )
    return req, items


@router.post("/v1/responses", summary="Create a response (OpenAI Responses API)")
async def create(body: ResponsesRequest, request: Request, state: State) -> Any:
    """A response: JSON, or with ``stream`` the Responses API's typed SSE events. Stored
    (``store``, the default) for ``previous_response_id`` and ``GET``."""
    owner = caller_of(request.scope).owner
    try:
        req, items = await _request(state, body, request)
        gen = await start_generation(state, req)
    except WorkerError as exc:
        return error_response(request, exc)
    encoder = ResponseEncoder(body, gen.model.spec.id)
    running = _running(request)
    running.add(owner, gen, encoder)

    async def keep(finished: Finished) -> dict[str, Any]:
        """The answer, stored when asked; a store that fails costs the storing, not the
        answer (it goes out with ``store: false``)."""
        answer = encoder.response(encoder.status_of(finished), finished)
        if body.store:
            stored = records.StoredResponse(answer, items + encoder.output_items())
            try:
                await records.save(state.sessions.store, stored, owner)
            except Exception:
                log.exception("could not store a response", extra={"response_id": encoder.id})
                encoder.body = body.model_copy(update={"store": False})
                answer = encoder.response(encoder.status_of(finished), finished)
        return answer

    if not body.stream:
        try:

            def on_event(event: GenerationEvent) -> None:
                if isinstance(event, Text | ToolCallStart | ToolCallArguments):
                    encoder.add(event)

            def final(finished: Finished) -> Finished:
                return finished

            whole = await answer_whole(gen, request, on_event, final, cancel_is_error=False)
            if not isinstance(whole, Finished):
                return whole  # the error response, or the one for a client that left
            return await keep(whole)
        finally:
            running.remove(encoder.id)

    async def before_final(finished: Finished) -> None:
        await keep(finished)
        running.remove(encoder.id)  # stored: a GET finds it there from now on

    def encode(event: GenerationEvent) -> list[str]:
        if isinstance(event, Text | ToolCallStart | ToolCallArguments):
            return [named_sse(e) for e in encoder.add(event)]
        if isinstance(event, Finished):
            return [named_sse(e) for e in encoder.finish(event)]
        return []

    fmt = StreamFormat(
        encode=encode,
        error=lambda error: named_sse(encoder.failed(error)),
        media_type="text/event-stream",
        head=tuple(named_sse(e) for e in encoder.start()),
        cancel_is_error=False,
        before_final=before_final,
        on_close=lambda: running.remove(encoder.id),
    )
    return await stream(gen, request, state, fmt)


@router.get("/v1/responses/{response_id}", summary="Retrieve a stored response")
async def retrieve(response_id: str, request: Request, state: State) -> Any:
    """The stored response (or the one still running), as it was answered."""
    owner = caller_of(request.scope).owner
    try:
        rid = check_response_id(response_id, "response_id")
        live = _running(request).get(rid, owner)
        if live is not None:
            return live[1].response("in_progress")
        stored = await records.load(state.sessions.store, rid, owner)
        if stored is None:
            raise records.not_found(rid)
    except WorkerError as exc:
        return error_response(request, exc)
    return stored.response


@router.delete("/v1/responses/{response_id}", summary="Delete a stored response")
async def delete(response_id: str, request: Request, state: State) -> Any:
    """``{"id", "object": "response", "deleted": true}``."""
    owner = caller_of(request.scope).owner
    try:
        rid = check_response_id(response_id, "response_id")
        if not await records.delete(state.sessions.store, rid, owner):
            raise records.not_found(rid)
    except WorkerError as exc:
        return error_response(request, exc)
    return {"id": rid, "object": "response", "deleted": True}


@router.post("/v1/responses/{response_id}/cancel", summary="Cancel a running response")
async def cancel(response_id: str, request: Request, state: State) -> Any:
    """Stop a response still being generated; it ends with ``status: "cancelled"``."""
    owner = caller_of(request.scope).owner
    try:
        rid = check_response_id(response_id, "response_id")
        live = _running(request).get(rid, owner)
        if live is None:
            if await records.load(state.sessions.store, rid, owner) is not None:
                raise invalid("response_id", "only a response still in progress can be cancelled")
            raise records.not_found(rid)
    except WorkerError as exc:
        return error_response(request, exc)
    gen, encoder = live
    gen.handle.cancel()
    return encoder.response("cancelled")


@router.post("/v1/responses/input_tokens", summary="Count a response request's input tokens")
async def input_tokens(body: ResponsesRequest, request: Request, state: State) -> Any:
    """``{"object": "response.input_tokens", "input_tokens": n}``: the prompt this request
    would take (earlier responses, instructions and tool list included)."""
    try:
        req, _ = await _request(state, body, request)
        _, n = await count_input_tokens(state, req)
    except WorkerError as exc:
        return error_response(request, exc)
    return {"object": "response.input_tokens", "input_tokens": n}
