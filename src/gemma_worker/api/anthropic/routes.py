"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` on the one pipeline."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gemma_worker.api.anthropic.convert import conversation, output, tool_params
from gemma_worker.api.anthropic.encode import MessageEncoder
from gemma_worker.api.anthropic.errors import anthropic_error_body
from gemma_worker.api.anthropic.types import CountTokensRequest, MessagesRequest
from gemma_worker.api.auth import caller_of
from gemma_worker.api.deps import State
from gemma_worker.api.errors import error_response
from gemma_worker.api.streaming import StreamFormat, answer_whole, named_sse, stream
from gemma_worker.core.errors import WorkerError
from gemma_worker.core.sampling import LengthRule, SamplingRequest
from gemma_worker.core.tool_stream import ToolCallArguments, ToolCallStart
from gemma_worker.engine.messages import Finished, Queued, Started, Text, Trimmed
from gemma_worker.runtime.generation import GenerationEvent
from gemma_worker.runtime.pipeline import count_input_tokens, start_generation
from gemma_worker.runtime.request import GenerationRequest

router = APIRouter(tags=["Anthropic-compatible"])


def _request(
    body: CountTokensRequest, request: Request, sampling: SamplingRequest
) -> GenerationRequest:
    """The neutral request of a Messages body (``INVALID_REQUEST`` naming a bad field)."""
    return GenerationRequest(
        input=conversation(body.system, body.messages),
        sampling=sampling,
        caller=caller_of(request.scope),
        transport="anthropic",
        output=output(tool_params(body.tools), body.tool_choice, body.output_config),
        model=body.model,
        n_messages=len(body.messages),
    )


@router.post("/v1/messages", summary="Messages (Anthropic-compatible)")
async def messages(body: MessagesRequest, request: Request, state: State) -> Any:
    """An assistant message: JSON, or with ``stream`` Anthropic's named SSE events."""
    try:
        sampling = SamplingRequest(
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            stop=tuple(body.stop_sequences or ()),
            length=LengthRule(param="max_tokens"),
        )
        gen = await start_generation(state, _request(body, request, sampling))
    except WorkerError as exc:
        return error_response(request, exc)
    encoder = MessageEncoder(gen.model.spec.id)
    if not body.stream:

        def on_event(event: GenerationEvent) -> None:
            if isinstance(event, Text | ToolCallStart | ToolCallArguments):
                encoder.add(event)

        return await answer_whole(gen, request, on_event, encoder.response)

    def encode(event: GenerationEvent) -> list[str]:
        if isinstance(event, Queued | Trimmed):  # message_start waits for the prompt's usage
            return []
        out = encoder.start(event if isinstance(event, Started) else None)
        if isinstance(event, Text | ToolCallStart | ToolCallArguments):
            out += encoder.add(event)
        elif isinstance(event, Finished):
            out += encoder.finish(event)
        return [named_sse(e) for e in out]

    fmt = StreamFormat(
        encode=encode,
        error=lambda error: named_sse(anthropic_error_body(error)),
        media_type="text/event-stream",
    )
    return await stream(gen, request, state, fmt)


@router.post("/v1/messages/count_tokens", summary="Count a request's tokens (Anthropic)")
async def count_tokens(body: CountTokensRequest, request: Request, state: State) -> Any:
    """``{"input_tokens": n}``: what the prompt of this request takes, tool list included."""
    try:
        _, n = await count_input_tokens(state, _request(body, request, SamplingRequest()))
    except WorkerError as exc:
        return error_response(request, exc)
    return {"input_tokens": n}
