"""OpenAI-compatible routes on the generation core, plus llama-server's tokenizer routes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from gemma_worker.api.auth import caller_of, grant_of
from gemma_worker.api.deps import State
from gemma_worker.api.errors import error_response
from gemma_worker.api.openai.chat import to_conversation, tool_spec
from gemma_worker.api.openai.encode import ChatEncoder, CompletionEncoder, sse
from gemma_worker.api.openai.errors import openai_error
from gemma_worker.api.openai.types import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ModelCard,
    ModelList,
    ModelStatusBody,
    NamedToolChoice,
    SamplingFields,
    TokenizeRequest,
)
from gemma_worker.api.streaming import StreamFormat, answer_whole, stream
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.model_names import shown
from gemma_worker.core.response_format import TextFormat
from gemma_worker.core.sampling import LengthRule, SamplingRequest
from gemma_worker.core.tool_stream import ToolCallArguments, ToolCallStart
from gemma_worker.engine.messages import Finished, Text
from gemma_worker.engine.model_files import embedded_file_path
from gemma_worker.runtime.generation import Generation, GenerationEvent
from gemma_worker.runtime.models import ModelView
from gemma_worker.runtime.pipeline import start_generation
from gemma_worker.runtime.request import GenerationRequest, Output, RawPrompt, ToolUse
from gemma_worker.runtime.state import WorkerState

router = APIRouter(tags=["OpenAI-compatible"])


def model_card(view: ModelView, *, files: bool) -> ModelCard:
    """``view`` as an OpenAI model card, with llama-server's router ``status``."""
    spec = view.spec
    path = spec.path or Path(embedded_file_path())
    try:
        stat: os.stat_result | None = path.stat()
    except OSError:
        stat = None
    return ModelCard(
        id=spec.id,
        created=int(stat.st_mtime) if stat is not None else int(time.time()),
        owned_by="gemma-worker",
        aliases=list(spec.aliases),
        default=spec.default,
        capabilities=["embedding"] if spec.embeds_only else ["completion", "embedding"],
        status=ModelStatusBody(
            value=view.status.value, failed=view.error is not None, message=view.error
        ),
        file=path.name if files else None,
        size=stat.st_size if files and stat is not None else None,
    )


@router.get("/v1/models", response_model=ModelList, summary="The models")
async def list_models(request: Request, state: State) -> ModelList:
    """Every model the worker can serve (those the key may use), with its state."""
    files = grant_of(request.scope).admin
    caller = caller_of(request.scope)
    return ModelList(
        data=[
            model_card(v, files=files)
            for v in state.models.views()
            if caller.may_use(v.spec.id, v.spec.aliases)
        ]
    )


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, summary="One model")
async def get_model(model_id: str, request: Request, state: State) -> Any:
    """The model ``model_id`` names (an id, alias or name:tag), else 404."""
    try:
        spec = state.models.registry.resolve(model_id)
    except WorkerError as exc:
        return error_response(request, exc)
    if not caller_of(request.scope).may_use(spec.id, spec.aliases):
        return error_response(
            request, WorkerError(ErrorCode.MODEL_NOT_FOUND, "model not found", param="model")
        )
    if state.models.registry.folder is None and model_id != spec.id:
        # one model serves every name, but only its own id is a model to look up
        return error_response(
            request,
            WorkerError(
                ErrorCode.MODEL_NOT_FOUND, f"model '{shown(model_id)}' not found", param="model"
            ),
        )
    return model_card(state.models.view(spec), files=grant_of(request.scope).admin)


def _invalid(param: str, message: str) -> WorkerError:
    return WorkerError(ErrorCode.INVALID_REQUEST, f"{param}: {message}", param=param)


def _sampling(body: SamplingFields, requested: int | None, param: str) -> SamplingRequest:
    stop = body.stop if isinstance(body.stop, list) else [body.stop] if body.stop else []
    return SamplingRequest(
        max_tokens=requested,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=tuple(stop),
        min_p=body.min_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=tuple((int(k), v) for k, v in (body.logit_bias or {}).items()),
        # OpenAI: an unset length is as much as the context leaves.
        length=LengthRule(param=param, unset="context"),
    )


def _tools(body: ChatCompletionRequest) -> Output | None:
    tools = body.tools or []
    if not tools or body.tool_choice == "none":
        return (
            None
            if isinstance(body.response_format, TextFormat | None)
            else Output("response_format", format=body.response_format)
        )
    if not isinstance(body.response_format, TextFormat | None):
        raise _invalid("response_format", "cannot be combined with tools")
    forced = (
        body.tool_choice.function.name if isinstance(body.tool_choice, NamedToolChoice) else None
    )
    offered = tuple(tool_spec(t) for t in tools if forced in {None, t.function.name})
    use = ToolUse(
        offered,
        required=forced is not None or body.tool_choice == "required",
        parallel=body.parallel_tool_calls and forced is None,
        forced=forced,
    )
    return Output("tools", tools=use)


@router.post("/v1/chat/completions", summary="Chat completion (OpenAI-compatible)")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: State) -> Any:
    """A chat answer: JSON, or with ``stream`` server-sent ``chat.completion.chunk`` events."""
    try:
        requested = body.max_completion_tokens or body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        output = _tools(body)
        gen = await start_generation(
            state,
            GenerationRequest(
                input=to_conversation(body.messages),
                sampling=_sampling(body, requested, param),
                caller=caller_of(request.scope),
                transport="openai",
                output=output,
                model=body.model,
                top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
                n_messages=len(body.messages),
            ),
        )
    except WorkerError as exc:
        return error_response(request, exc)
    encoder = ChatEncoder(
        gen.model.spec.id,
        logprobs=body.logprobs,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
    )
    if body.stream:
        return await _stream(gen, request, state, _chat_chunks(encoder))
    return await _collect(gen, request, encoder)


@router.post("/v1/completions", summary="Text completion (OpenAI-compatible)")
async def completions(body: CompletionRequest, request: Request, state: State) -> Any:
    """A plain completion of ``prompt``: JSON, or with ``stream`` server-sent chunks."""
    try:
        if not body.text:
            raise _invalid("prompt", "must not be empty")
        gen = await start_generation(
            state,
            GenerationRequest(
                input=RawPrompt(body.text),
                sampling=_sampling(body, body.max_tokens, "max_tokens"),
                caller=caller_of(request.scope),
                transport="openai",
                model=body.model,
                top_logprobs=body.logprobs,
            ),
        )
    except WorkerError as exc:
        return error_response(request, exc)
    encoder = CompletionEncoder(
        gen.model.spec.id,
        logprobs=body.logprobs is not None,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
    )
    if body.stream:
        return await _stream(gen, request, state, _completion_chunks(encoder))
    return await _collect(gen, request, encoder)


async def _collect(
    gen: Generation, request: Request, encoder: ChatEncoder | CompletionEncoder
) -> Any:
    def on_event(event: GenerationEvent) -> None:
        match event:
            case Text():
                encoder.add(event)
            case ToolCallStart() | ToolCallArguments() if isinstance(encoder, ChatEncoder):
                encoder.add(event)

    return await answer_whole(gen, request, on_event, encoder.response)


ChunkMaker = Callable[[GenerationEvent], list[dict[str, Any] | str]]


def _chat_chunks(encoder: ChatEncoder) -> ChunkMaker:
    started = False

    def make(event: GenerationEvent) -> list[dict[str, Any] | str]:
        nonlocal started
        out: list[dict[str, Any] | str] = []
        if not started and isinstance(event, Text | ToolCallStart | ToolCallArguments | Finished):
            started = True
            out.append(encoder.chunk({"role": "assistant", "content": ""}))
        match event:
            case Text(logprobs=logprobs):
                out.append(encoder.chunk(encoder.add(event), logprobs=logprobs))
            case ToolCallStart() | ToolCallArguments():
                out.append(encoder.chunk(encoder.add(event)))
            case Finished(usage=usage):
                out.append(encoder.chunk({}, encoder.finish_reason(event)))
                if encoder.include_usage:
                    out.append(encoder.usage_chunk(usage))
        return out

    return make


def _completion_chunks(encoder: CompletionEncoder) -> ChunkMaker:
    def make(event: GenerationEvent) -> list[dict[str, Any] | str]:
        match event:
            case Text():
                return [encoder.chunk(event)]
            case Finished(usage=usage):
                final = encoder.final_chunk(event)
                return [final, encoder.usage_chunk(usage)] if encoder.include_usage else [final]
        return []

    return make


async def _stream(gen: Generation, request: Request, state: WorkerState, chunks: ChunkMaker) -> Any:
    fmt = StreamFormat(
        encode=lambda event: [sse(chunk) for chunk in chunks(event)],
        error=lambda error: sse({"error": openai_error(error)}),
        media_type="text/event-stream",
        done=sse("[DONE]"),
    )
    return await stream(gen, request, state, fmt)


@router.post("/tokenize", summary="Tokenize (llama-server's shape)")
async def tokenize(body: TokenizeRequest, request: Request, state: State) -> Any:
    """``{"tokens": [ids]}``, or with ``with_pieces`` ``[{"id", "piece"}]``."""
    try:
        state.lifecycle.admit()
        state.limits.check_chars(len(body.content))
        use = await state.models.use(body.model)
        try:
            tokens = await use.engine.tokenize(
                body.content, add_special=body.add_special, parse_special=body.parse_special
            )
            if not body.with_pieces:
                return {"tokens": tokens}
            pieces = await use.engine.token_pieces(tokens)
        finally:
            use.release()
    except WorkerError as exc:
        return error_response(request, exc)
    return {"tokens": [{"id": t, "piece": _piece(p)} for t, p in zip(tokens, pieces, strict=True)]}


def _piece(data: bytes) -> str | list[int]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # part of a character: llama-server gives the bytes
        return list(data)


@router.post("/detokenize", summary="Detokenize (llama-server's shape)")
async def detokenize(body: DetokenizeRequest, request: Request, state: State) -> Any:
    """``{"content": text}``."""
    try:
        state.lifecycle.admit()
        use = await state.models.use(body.model)
        try:
            pieces = await use.engine.token_pieces(body.tokens)
        finally:
            use.release()
    except WorkerError as exc:
        return error_response(request, exc)
    return {"content": b"".join(pieces).decode("utf-8", "replace")}
