"""Ollama's ``POST /api/embed`` and its older ``POST /api/embeddings``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gemma_worker.api.auth import caller_of
from gemma_worker.api.deps import state_of
from gemma_worker.api.embed_inputs import parse_inputs
from gemma_worker.api.embed_json import vectors_json
from gemma_worker.api.errors import error_response
from gemma_worker.api.json_body import body_schema, read_body
from gemma_worker.api.ollama.catalog import ollama_name
from gemma_worker.api.ollama.routes import keep_alive_of
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.runtime.embedding import EmbeddingRequest, embed
from gemma_worker.runtime.state import WorkerState

router = APIRouter(tags=["Ollama-compatible"])


class _Embedding(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = ""
    keep_alive: float | str | None = None
    options: dict[str, Any] | None = Field(default=None, description="Accepted; none applies here.")
    truncate: bool = Field(
        default=True, description="Cut inputs over the model's limit (Ollama's default)."
    )


class EmbedBody(_Embedding):
    """``/api/embed``: ``input`` a string or a list of strings (absent: load the model)."""

    input: Any = None
    dimensions: int | None = None


class LegacyEmbedBody(_Embedding):
    """``/api/embeddings``: one ``prompt`` (absent: load the model)."""

    prompt: Any = None


async def _load(state: WorkerState, request: Request, name: str, keep: float | None) -> str:
    """No input: load the model (Ollama's clients preload so), or unload it with
    ``keep_alive: 0``; its Ollama name."""
    state.lifecycle.admit()
    spec = state.models.registry.resolve_embedding(name)
    caller_of(request.scope).check_may_use(spec)
    if keep == 0:
        await state.models.unload(spec.id)
    else:
        use = await state.models.use_spec(spec, embed=True)
        use.release(keep)
    return ollama_name(spec)


@router.post(
    "/api/embed",
    summary="Embeddings (Ollama-compatible)",
    openapi_extra=body_schema(EmbedBody),
    response_model=None,
)
async def embed_route(request: Request) -> Response | dict[str, Any]:
    """``embeddings``: one L2-normalised vector per input."""
    body = await read_body(request, EmbedBody)
    state = state_of(request)
    try:
        keep = keep_alive_of(body.keep_alive)
        if body.input is None:
            name = await _load(state, request, body.model, keep)
            return {"model": name, "embeddings": []}
        result = await embed(
            state,
            EmbeddingRequest(
                inputs=parse_inputs(body.input, "input", tokens=False),
                caller=caller_of(request.scope),
                transport="ollama",
                model=body.model or None,
                truncate=body.truncate,
                dimensions=body.dimensions,
                keep_alive=keep,
            ),
        )
    except WorkerError as exc:
        return error_response(request, exc)
    return vectors_json(
        {
            "model": body.model or result.model,
            "embeddings": result.vectors,
            "total_duration": round(result.total_seconds * 1e9),
            "load_duration": round(result.load_seconds * 1e9),
            "prompt_eval_count": result.n_tokens,
        }
    )


@router.post(
    "/api/embeddings",
    summary="One embedding (Ollama's older API)",
    openapi_extra=body_schema(LegacyEmbedBody),
    response_model=None,
)
async def embeddings_route(request: Request) -> Response | dict[str, Any]:
    """``embedding``: the vector of ``prompt`` (L2-normalised, unlike Ollama's)."""
    body = await read_body(request, LegacyEmbedBody)
    state = state_of(request)
    try:
        keep = keep_alive_of(body.keep_alive)
        if body.prompt is None:
            await _load(state, request, body.model, keep)
            return {"embedding": []}
        if not isinstance(body.prompt, str):
            raise WorkerError(ErrorCode.INVALID_REQUEST, "prompt: must be a string", param="prompt")
        result = await embed(
            state,
            EmbeddingRequest(
                inputs=(body.prompt,),
                caller=caller_of(request.scope),
                transport="ollama",
                model=body.model or None,
                field="prompt",
                truncate=body.truncate,
                keep_alive=keep,
            ),
        )
    except WorkerError as exc:
        return error_response(request, exc)
    return vectors_json({"embedding": result.vectors[0]})
