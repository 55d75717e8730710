"""OpenAI-compatible routes on the generation core, plus llama-server's tokenizer routes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gemma_worker.api.deps import State
from gemma_worker.api.errors import error_response
from gemma_worker.api.openai.chat import (
    content_text,
    render_chat,
    to_conversation,
    tools_instructions,
)
from gemma_worker.api.openai.encode import ChatEncoder, CompletionEncoder, sse
from gemma_worker.api.openai.errors import openai_error
from gemma_worker.api.openai.types import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ModelCard,
    ModelList,
    NamedToolChoice,
    SamplingFields,
    TokenizeRequest,
)
from gemma_worker.api.state import WorkerState
from gemma_worker.api.streaming import StreamFormat, answer_whole, start_rest_generation, stream
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.json_schema import ToolSpec, tool_call_gbnf
from gemma_worker.core.request import SamplingParams
from gemma_worker.core.response_format import TextFormat, grammar_for
from gemma_worker.core.tool_stream import ToolCallArguments, ToolCallStart
from gemma_worker.engine.grammar import Grammar
from gemma_worker.engine.messages import Finished, Text
from gemma_worker.engine.prompt import Prompt
from gemma_worker.service.generation import (
    Generation,
    GenerationEvent,
    compile_output_grammar,
)

router = APIRouter(tags=["OpenAI-compatible"])


def _model_id(state: WorkerState) -> str:
    path = getattr(state.engine, "model_path", None)
    if path is not None:
        return Path(path).stem
    info = state.engine.info
    return info.name if info is not None else "unknown"


def _model_card(state: WorkerState) -> ModelCard:
    path = getattr(state.engine, "model_path", None)
    created = int(Path(path).stat().st_mtime) if path is not None else int(time.time())
    return ModelCard(id=_model_id(state), created=created, owned_by="gemma-worker")


@router.get("/v1/models", response_model=ModelList, summary="The loaded model")
async def list_models(state: State) -> ModelList:
    """The one model this worker serves (an empty list while it loads)."""
    return ModelList(data=[_model_card(state)] if state.engine.info is not None else [])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, summary="One model")
async def get_model(model_id: str, request: Request, state: State) -> Any:
    """The loaded model if ``model_id`` names it, else 404."""
    if state.engine.info is None or model_id != _model_id(state):
        return JSONResponse(
            {
                "error": {
                    "message": f"The model '{model_id[:128]}' does not exist",
                    "type": "invalid_request_error",
                    "param": "model",
                    "code": "model_not_found",
                }
            },
            status_code=404,
        )
    return _model_card(state)


def _invalid(param: str, message: str) -> WorkerError:
    return WorkerError(ErrorCode.INVALID_REQUEST, f"{param}: {message}", param=param)


def _sampling(
    state: WorkerState, body: SamplingFields, requested: int | None, param: str
) -> SamplingParams:
    limits = state.limits
    if requested is not None and requested > limits.max_tokens_cap:
        raise _invalid(param, f"{requested} is above the limit of {limits.max_tokens_cap}")
    n_vocab = state.engine.info.n_vocab if state.engine.info is not None else 0
    bias: list[tuple[int, float]] = []
    for key, value in (body.logit_bias or {}).items():
        if int(key) >= n_vocab:
            raise _invalid("logit_bias", f"token id {key} is not in the vocabulary")
        bias.append((int(key), float("-inf") if value <= -100 else value))
    stop = body.stop if isinstance(body.stop, list) else [body.stop] if body.stop else []
    return SamplingParams(
        max_tokens=requested or limits.max_tokens_cap,
        temperature=limits.temperature if body.temperature is None else body.temperature,
        top_p=limits.top_p if body.top_p is None else body.top_p,
        top_k=limits.cap_top_k(limits.top_k if body.top_k is None else body.top_k),
        seed=None if body.seed is None else body.seed % (2**32 - 1),
        stop=tuple(stop),
        min_p=body.min_p or 0.0,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=tuple(bias),
        fit_context=requested is None,
    )


@router.post("/v1/chat/completions", summary="Chat completion (OpenAI-compatible)")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: State) -> Any:
    """A chat answer: JSON, or with ``stream`` server-sent ``chat.completion.chunk`` events."""
    try:
        state.admit()
        requested = body.max_completion_tokens or body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        params = _sampling(state, body, requested, param)
        state.limits.check_chars(
            sum(len(content_text(m.content)) for m in body.messages), len(body.messages)
        )
        tools = body.tools or []
        use_tools = bool(tools) and body.tool_choice != "none"
        forced = (
            body.tool_choice.function.name
            if isinstance(body.tool_choice, NamedToolChoice)
            else None
        )
        if use_tools and not isinstance(body.response_format, TextFormat | None):
            raise _invalid("response_format", "cannot be combined with tools")
        offered = [t for t in tools if forced in {None, t.function.name}]
        specs = [
            ToolSpec(t.function.name, t.function.parameters or {"type": "object"}) for t in offered
        ]
        required = forced is not None or body.tool_choice == "required"
        parallel = body.parallel_tool_calls and forced is None
        fmt = body.response_format
        grammar = await compile_output_grammar(
            state,
            (lambda: tool_call_gbnf(specs, required=required, parallel=parallel))
            if use_tools
            else (lambda: grammar_for(fmt)),
            "tools" if use_tools else "response_format",
            params,
            param,
        )
        text = tools_instructions(offered, parallel=parallel, forced=forced) if use_tools else None
        prompt = await render_chat(state, lambda: to_conversation(body.messages, text))
        gen = await _start(
            state, request, prompt, params, grammar=grammar, body=body, tools=use_tools
        )
    except WorkerError as exc:
        return error_response(request, exc)
    encoder = ChatEncoder(
        _model_id(state),
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
        state.admit()
        params = _sampling(state, body, body.max_tokens, "max_tokens")
        state.limits.check_chars(len(body.text))
        if not body.text:
            raise _invalid("prompt", "must not be empty")
        prompt = Prompt(body.text, add_special=True, parse_special=False, format="plain")
        gen = await _start(
            state, request, prompt, params, grammar=None, body=body, top=body.logprobs
        )
    except WorkerError as exc:
        return error_response(request, exc)
    encoder = CompletionEncoder(
        _model_id(state),
        logprobs=body.logprobs is not None,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
    )
    if body.stream:
        return await _stream(gen, request, state, _completion_chunks(encoder))
    return await _collect(gen, request, encoder)


async def _start(
    state: WorkerState,
    request: Request,
    prompt: Prompt,
    params: SamplingParams,
    *,
    grammar: Grammar | None,
    body: SamplingFields,
    tools: bool = False,
    top: int | None = None,
) -> Generation:
    if isinstance(body, ChatCompletionRequest) and body.logprobs:
        top = body.top_logprobs or 0
    return await start_rest_generation(
        state,
        request,
        prompt,
        params,
        grammar=grammar,
        transport="openai",
        tools=tools,
        top_logprobs=top,
    )


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
        state.admit()
        state.limits.check_chars(len(body.content))
        tokens = await state.engine.tokenize(
            body.content, add_special=body.add_special, parse_special=body.parse_special
        )
        if not body.with_pieces:
            return {"tokens": tokens}
        pieces = await state.engine.token_pieces(tokens)
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
        state.admit()
        pieces = await state.engine.token_pieces(body.tokens)
    except WorkerError as exc:
        return error_response(request, exc)
    return {"content": b"".join(pieces).decode("utf-8", "replace")}
