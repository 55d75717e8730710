"""Ollama-compatible routes on the generation core: ``/api/version``, ``/api/tags``,
``/api/show``, ``/api/ps``, ``/api/generate`` and ``/api/chat``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from gemma_worker import __version__
from gemma_worker.api.deps import State
from gemma_worker.api.errors import error_response
from gemma_worker.api.ollama.catalog import ModelCatalog
from gemma_worker.api.ollama.chat import conversation
from gemma_worker.api.ollama.encode import OllamaEncoder, ndjson
from gemma_worker.api.ollama.errors import ollama_error_body
from gemma_worker.api.ollama.types import ChatRequest, Format, GenerateRequest, Options, ShowRequest
from gemma_worker.api.openai.chat import render_chat, tools_instructions
from gemma_worker.api.state import WorkerState
from gemma_worker.api.streaming import StreamFormat, answer_whole, start_rest_generation, stream
from gemma_worker.core.conversation import Conversation
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.json_schema import ToolSpec, tool_call_gbnf
from gemma_worker.core.request import SamplingParams
from gemma_worker.core.response_format import (
    JsonObjectFormat,
    JsonSchemaFormat,
    JsonSchemaSpec,
    grammar_for,
)
from gemma_worker.core.tool_stream import ToolCallArguments, ToolCallStart
from gemma_worker.engine.llama import ModelInfo
from gemma_worker.engine.messages import Finished, Text
from gemma_worker.engine.prompt import Prompt
from gemma_worker.service.generation import (
    Generation,
    GenerationEvent,
    compile_output_grammar,
)

router = APIRouter(tags=["Ollama-compatible"])


def _catalog(request: Request) -> ModelCatalog:
    catalog: ModelCatalog = request.app.state.model_catalog
    return catalog


Catalog = Annotated[ModelCatalog, Depends(_catalog)]


def _invalid(message: str) -> WorkerError:
    return WorkerError(ErrorCode.INVALID_REQUEST, message)


def _loaded_info(state: WorkerState) -> ModelInfo:
    info = state.engine.info
    if info is None:
        raise WorkerError(ErrorCode.OVERLOADED, "the model is still loading", retry_after=1)
    return info


@router.get("/api/version", summary="Version (Ollama-compatible)")
async def version() -> dict[str, str]:
    """The worker's version: dotted numbers, as Ollama's clients parse it."""
    return {"version": __version__}


@router.get("/api/tags", summary="Models (Ollama-compatible)")
async def tags(state: State, catalog: Catalog) -> dict[str, Any]:
    """The one loaded model (none while it loads)."""
    info = state.engine.info
    return {"models": [] if info is None else [await catalog.entry(info)]}


@router.get("/api/ps", summary="Running models (Ollama-compatible)")
async def ps(state: State, catalog: Catalog) -> dict[str, Any]:
    """The loaded model: it stays loaded as long as the worker runs."""
    info = state.engine.info
    return {"models": [] if info is None else [await catalog.running(info)]}


@router.post("/api/show", summary="Model details (Ollama-compatible)")
async def show(body: ShowRequest, request: Request, state: State, catalog: Catalog) -> Any:
    """Details, parameters, template and capabilities of the loaded model, whatever name the
    request gives."""
    try:
        if not (body.model or body.name):
            raise _invalid("model is required")
        return catalog.show(_loaded_info(state))
    except WorkerError as exc:
        return error_response(request, exc)


def _sampling(state: WorkerState, options: Options | None) -> SamplingParams:
    o = options or Options()
    limits = state.limits
    n_ctx = state.engine.n_ctx
    if o.num_ctx is not None and o.num_ctx > n_ctx:
        raise _invalid(f"num_ctx {o.num_ctx} is above this worker's context of {n_ctx} tokens")
    if o.num_predict == 0:
        raise _invalid("num_predict must not be 0")
    if o.num_predict is not None and o.num_predict > limits.max_tokens_cap:
        raise _invalid(f"num_predict {o.num_predict} is above the limit of {limits.max_tokens_cap}")
    until_full = o.num_predict is not None and o.num_predict < 0
    if o.num_predict is None:
        max_tokens = limits.default_max_tokens
    else:
        max_tokens = limits.max_tokens_cap if until_full else o.num_predict
    last_n = o.repeat_last_n if o.repeat_last_n is not None else 64
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=limits.temperature if o.temperature is None else o.temperature,
        top_p=limits.top_p if o.top_p is None else o.top_p,
        top_k=limits.cap_top_k(limits.top_k if o.top_k is None else o.top_k),
        seed=None if o.seed is None or o.seed < 0 else o.seed % (2**32 - 1),
        stop=o.stops,
        min_p=o.min_p or 0.0,
        presence_penalty=o.presence_penalty,
        frequency_penalty=o.frequency_penalty,
        repeat_penalty=1.0 if o.repeat_penalty is None else o.repeat_penalty,
        repeat_last_n=n_ctx if last_n < 0 else last_n,
        fit_context=until_full or o.num_predict is None,
    )


def _output_format(fmt: Format) -> JsonObjectFormat | JsonSchemaFormat | None:
    if fmt == "json":
        return JsonObjectFormat(type="json_object")
    if isinstance(fmt, dict):
        spec = JsonSchemaSpec(name="ollama_format", schema_=fmt)
        return JsonSchemaFormat(type="json_schema", json_schema=spec)
    return None


@router.post("/api/generate", summary="Completion (Ollama-compatible)")
async def generate(body: GenerateRequest, request: Request, state: State, catalog: Catalog) -> Any:
    """A completion of ``prompt``: an ND-JSON stream (the default) or one JSON object."""
    encoder = OllamaEncoder(catalog.name, "generate")
    try:
        state.admit()
        params = _sampling(state, body.options)
        state.limits.check_chars(len(body.prompt) + len(body.system or ""))
        if not body.prompt:
            return _loaded(encoder, body.stream)
        if body.raw:
            prompt = Prompt(body.prompt, add_special=True, parse_special=True, format="plain")
        else:
            renderer = state.engine.renderer
            conv = Conversation(body.prompt, renderer.default_format, (), body.system)
            prompt = renderer.render(conv)
        fmt = _output_format(body.format)
        grammar = await compile_output_grammar(
            state, lambda: grammar_for(fmt), "format", params, "options.num_predict"
        )
        gen = await start_rest_generation(
            state, request, prompt, params, grammar=grammar, transport="ollama"
        )
    except WorkerError as exc:
        return error_response(request, exc)
    return await _answer(gen, request, state, encoder, body.stream)


@router.post("/api/chat", summary="Chat (Ollama-compatible)")
async def chat(body: ChatRequest, request: Request, state: State, catalog: Catalog) -> Any:
    """The next assistant message: text, or tool calls with JSON-object arguments."""
    encoder = OllamaEncoder(catalog.name, "chat")
    try:
        state.admit()
        params = _sampling(state, body.options)
        state.limits.check_chars(sum(len(m.content) for m in body.messages), len(body.messages))
        if not body.messages:
            return _loaded(encoder, body.stream)
        tools = body.tools or []
        if tools and body.format:
            raise _invalid("format cannot be combined with tools")
        specs = [
            ToolSpec(t.function.name, t.function.parameters or {"type": "object"}) for t in tools
        ]
        fmt = _output_format(body.format)
        grammar = await compile_output_grammar(
            state,
            (lambda: tool_call_gbnf(specs, required=False, parallel=True))
            if tools
            else (lambda: grammar_for(fmt)),
            "tools" if tools else "format",
            params,
            "options.num_predict",
        )
        text = tools_instructions(tools, parallel=True, forced=None) if tools else None
        prompt = await render_chat(state, lambda: conversation(body.messages, text))
        gen = await start_rest_generation(
            state, request, prompt, params, grammar=grammar, transport="ollama", tools=bool(tools)
        )
    except WorkerError as exc:
        return error_response(request, exc)
    return await _answer(gen, request, state, encoder, body.stream)


def _loaded(encoder: OllamaEncoder, streaming: bool) -> Response:
    """An empty request: Ollama loads the model; here it is loaded already."""
    line = encoder.loaded()
    if streaming:
        return Response(ndjson(line), media_type="application/x-ndjson")
    return JSONResponse(line)


def _keep(encoder: OllamaEncoder, event: GenerationEvent) -> list[dict[str, Any]]:
    """Take ``event`` into ``encoder``; the lines a stream sends for it now."""
    match event:
        case Text(text=text):
            return [encoder.add_text(text)]
        case ToolCallStart() | ToolCallArguments():
            encoder.add_call(event)
        case Finished():
            calls = encoder.calls_line()
            return [*([calls] if calls else []), encoder.final(event, whole=False)]
    return []


async def _answer(
    gen: Generation, request: Request, state: WorkerState, encoder: OllamaEncoder, streaming: bool
) -> Any:
    if streaming:
        fmt = StreamFormat(
            encode=lambda event: [ndjson(line) for line in _keep(encoder, event)],
            error=lambda error: ndjson(ollama_error_body(error)),
            media_type="application/x-ndjson",
        )
        return await stream(gen, request, state, fmt)
    return await answer_whole(
        gen, request, lambda event: _keep(encoder, event), lambda f: encoder.final(f, whole=True)
    )
