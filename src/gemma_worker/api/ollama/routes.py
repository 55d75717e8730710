"""Ollama-compatible routes on the generation core: ``/api/version``, ``/api/tags``,
``/api/show``, ``/api/ps``, ``/api/generate`` and ``/api/chat``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from gemma_worker import __version__
from gemma_worker.api.auth import caller_of, grant_of
from gemma_worker.api.deps import State
from gemma_worker.api.errors import error_response
from gemma_worker.api.ollama.catalog import ModelCatalog, ollama_name
from gemma_worker.api.ollama.chat import conversation
from gemma_worker.api.ollama.encode import OllamaEncoder, ndjson
from gemma_worker.api.ollama.errors import ollama_error_body
from gemma_worker.api.ollama.types import ChatRequest, Format, GenerateRequest, Options, ShowRequest
from gemma_worker.api.openai.chat import tool_spec
from gemma_worker.api.streaming import StreamFormat, answer_whole, stream
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.keep_alive import KeepAliveError, parse_keep_alive
from gemma_worker.core.response_format import JsonObjectFormat, JsonSchemaFormat, JsonSchemaSpec
from gemma_worker.core.sampling import LengthRule, SamplingRequest
from gemma_worker.core.tool_stream import ToolCallArguments, ToolCallStart
from gemma_worker.engine.messages import Finished, Text
from gemma_worker.runtime.generation import Generation, GenerationEvent
from gemma_worker.runtime.models import ModelView
from gemma_worker.runtime.pipeline import start_generation
from gemma_worker.runtime.registry import ModelSpec
from gemma_worker.runtime.request import GenerationRequest, Output, RawPrompt, ToolUse
from gemma_worker.runtime.state import WorkerState
from gemma_worker.sessions.service import TurnRequest

router = APIRouter(tags=["Ollama-compatible"])


async def _catalog(request: Request) -> ModelCatalog:
    """Dependency (a coroutine, as :func:`~gemma_worker.api.deps.get_state`): the catalog."""
    catalog: ModelCatalog = request.app.state.model_catalog
    return catalog


Catalog = Annotated[ModelCatalog, Depends(_catalog)]


def _invalid(message: str) -> WorkerError:
    return WorkerError(ErrorCode.INVALID_REQUEST, message)


def _visible(request: Request, views: list[ModelView]) -> list[ModelView]:
    caller = caller_of(request.scope)
    return [v for v in views if caller.may_use(v.spec.id, v.spec.aliases)]


@router.get("/api/version", summary="Version (Ollama-compatible)")
async def version() -> dict[str, str]:
    """The worker's version: dotted numbers, as Ollama's clients parse it."""
    return {"version": __version__}


@router.get("/api/tags", summary="Models (Ollama-compatible)")
async def tags(request: Request, state: State, catalog: Catalog) -> dict[str, Any]:
    """Every model the worker can serve, loaded or not."""
    files = grant_of(request.scope).admin
    views = _visible(request, state.models.views())
    return {"models": [await catalog.entry(v, files=files) for v in views]}


@router.get("/api/ps", summary="Running models (Ollama-compatible)")
async def ps(request: Request, state: State, catalog: Catalog) -> dict[str, Any]:
    """The loaded models, with when each unloads (``expires_at``)."""
    files = grant_of(request.scope).admin
    views = _visible(request, state.models.loaded())
    return {"models": [await catalog.running(v, files=files) for v in views]}


@router.post("/api/show", summary="Model details (Ollama-compatible)")
async def show(body: ShowRequest, request: Request, state: State, catalog: Catalog) -> Any:
    """Details, parameters, template and capabilities of a model (loaded or not; its
    template once it is loaded)."""
    try:
        name = body.model or body.name
        if not name:
            raise _invalid("model is required")
        spec = state.models.registry.resolve(name)
        if not caller_of(request.scope).may_use(spec.id, spec.aliases):
            raise _forbidden(spec)
        view = state.models.view(spec)
        return await catalog.show(view, files=grant_of(request.scope).admin)
    except WorkerError as exc:
        return error_response(request, exc)


def _forbidden(spec: ModelSpec) -> WorkerError:
    return WorkerError(ErrorCode.FORBIDDEN, f"this API key may not use model '{spec.id}'")


def keep_alive_of(value: float | str | None) -> float | None:
    """A request's ``keep_alive`` in seconds (``None``: it did not say); ``INVALID_REQUEST``
    when it is not a duration."""
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except KeepAliveError as exc:
        raise _invalid(str(exc)) from exc


def _sampling(options: Options | None) -> SamplingRequest:
    o = options or Options()
    if o.num_predict == 0:
        raise _invalid("num_predict must not be 0")
    until_full = o.num_predict is not None and o.num_predict < 0
    return SamplingRequest(
        max_tokens=None if until_full else o.num_predict,
        temperature=o.temperature,
        top_p=o.top_p,
        top_k=o.top_k,
        seed=None if o.seed is None or o.seed < 0 else o.seed,  # Ollama: -1 is random
        stop=o.stops,
        min_p=o.min_p,
        presence_penalty=o.presence_penalty,
        frequency_penalty=o.frequency_penalty,
        repeat_penalty=o.repeat_penalty,
        repeat_last_n=o.repeat_last_n,
        until_full=until_full,
        context_tokens=o.num_ctx,
        # Ollama: an unset length is the default, shortened to what the context leaves.
        length=LengthRule(param="options.num_predict", unset="default", fit=True),
    )


def _output_format(fmt: Format) -> JsonObjectFormat | JsonSchemaFormat | None:
    if fmt == "json":
        return JsonObjectFormat(type="json_object")
    if isinstance(fmt, dict):
        spec = JsonSchemaSpec(name="ollama_format", schema_=fmt)
        return JsonSchemaFormat(type="json_schema", json_schema=spec)
    return None


def _output(fmt: Format, field: str = "format") -> Output | None:
    json_format = _output_format(fmt)
    return None if json_format is None else Output(field, format=json_format)


@router.post("/api/generate", summary="Completion (Ollama-compatible)")
async def generate(body: GenerateRequest, request: Request, state: State) -> Any:
    """A completion of ``prompt``: an ND-JSON stream (the default) or one JSON object."""
    try:
        sampling = _sampling(body.options)
        keep_alive = keep_alive_of(body.keep_alive)
        if not body.prompt:
            return await _load_or_unload(
                request, state, body.model, keep_alive, kind="generate", streaming=body.stream
            )
        source: RawPrompt | TurnRequest = (
            RawPrompt(body.prompt, parse_special=True)
            if body.raw
            else TurnRequest(body.prompt, system=body.system, stateless=True)
        )
        gen = await start_generation(
            state,
            GenerationRequest(
                input=source,
                sampling=sampling,
                caller=caller_of(request.scope),
                transport="ollama",
                output=_output(body.format),
                model=body.model,
                keep_alive=keep_alive,
            ),
        )
    except WorkerError as exc:
        return error_response(request, exc)
    encoder = OllamaEncoder(
        ollama_name(gen.model.spec), "generate", load_ns=round(gen.model.load_seconds * 1e9)
    )
    return await _answer(gen, request, state, encoder, body.stream)


@router.post("/api/chat", summary="Chat (Ollama-compatible)")
async def chat(body: ChatRequest, request: Request, state: State) -> Any:
    """The next assistant message: text, or tool calls with JSON-object arguments."""
    try:
        sampling = _sampling(body.options)
        keep_alive = keep_alive_of(body.keep_alive)
        if not body.messages:
            return await _load_or_unload(
                request, state, body.model, keep_alive, kind="chat", streaming=body.stream
            )
        tools = body.tools or []
        if tools and body.format:
            raise _invalid("format cannot be combined with tools")
        specs = tuple(tool_spec(t) for t in tools)
        gen = await start_generation(
            state,
            GenerationRequest(
                input=conversation(body.messages),
                sampling=sampling,
                caller=caller_of(request.scope),
                transport="ollama",
                output=Output("tools", tools=ToolUse(specs)) if tools else _output(body.format),
                model=body.model,
                keep_alive=keep_alive,
                n_messages=len(body.messages),
            ),
        )
    except WorkerError as exc:
        return error_response(request, exc)
    encoder = OllamaEncoder(
        ollama_name(gen.model.spec), "chat", load_ns=round(gen.model.load_seconds * 1e9)
    )
    return await _answer(gen, request, state, encoder, body.stream)


async def _load_or_unload(
    request: Request,
    state: WorkerState,
    name: str,
    keep_alive: float | None,
    *,
    kind: Literal["generate", "chat"],
    streaming: bool,
) -> Response:
    """An empty request: Ollama loads the model, or with ``keep_alive: 0`` unloads it."""
    state.lifecycle.admit()
    spec = state.models.registry.resolve(name)
    if not caller_of(request.scope).may_use(spec.id, spec.aliases):
        raise _forbidden(spec)
    encoder = OllamaEncoder(ollama_name(spec), kind)
    if keep_alive == 0:
        await state.models.unload(spec.id)
        line = encoder.loaded(done_reason="unload")
    else:
        await state.models.load(spec.id, keep_alive)
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
