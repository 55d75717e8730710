"""Ollama's ``POST /api/embed`` and its older ``POST /api/embeddings``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gemma_worker.api.embed_inputs import parse_inputs
from gemma_worker.api.json_route import Call, JsonRoute
from gemma_worker.api.ollama.catalog import ollama_name
from gemma_worker.api.ollama.routes import keep_alive_of
from gemma_worker.api.ollama.types import Options
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.runtime.embedding import EmbeddingRequest, Embeddings, embed
from gemma_worker.runtime.request import Caller
from gemma_worker.runtime.state import WorkerState

TAG = "Ollama-compatible"


class _Embedding(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = ""
    keep_alive: float | str | None = None
    options: Options | None = Field(default=None, description="Accepted; none applies here.")
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


async def _load(state: WorkerState, caller: Caller, name: str, keep: float | None) -> str:
    """No input: load the model (Ollama's clients preload so), or unload it with
    ``keep_alive: 0``; its Ollama name."""
    state.lifecycle.admit()
    spec = state.models.registry.resolve_embedding(name)
    caller.check_may_use(spec)
    if keep == 0:
        await state.models.unload(spec.id)
    else:
        use = await state.models.use_spec(spec, embed=True)
        use.release(keep)
    return ollama_name(spec)


async def embed_route(call: Call[EmbedBody]) -> None:
    """``embeddings``: one L2-normalised vector per input."""
    body = call.body
    keep = keep_alive_of(body.keep_alive)
    if body.input is None:
        name = await _load(call.state, call.caller, body.model, keep)
        await call.answer({"model": name, "embeddings": []})
        return

    async def deliver(result: Embeddings) -> None:
        await call.answer(
            {
                "model": body.model or result.model,
                "embeddings": result.vectors,
                "total_duration": round(result.total_seconds * 1e9),
                "load_duration": round(result.load_seconds * 1e9),
                "prompt_eval_count": result.n_tokens,
            }
        )

    request = EmbeddingRequest(
        inputs=parse_inputs(body.input, "input", tokens=False),
        caller=call.caller,
        transport="ollama",
        model=body.model or None,
        truncate=body.truncate,
        dimensions=body.dimensions,
        keep_alive=keep,
    )
    await embed(call.state, request, deliver)


async def embeddings_route(call: Call[LegacyEmbedBody]) -> None:
    """``embedding``: the vector of ``prompt`` (L2-normalised, unlike Ollama's)."""
    body = call.body
    keep = keep_alive_of(body.keep_alive)
    if body.prompt is None:
        await _load(call.state, call.caller, body.model, keep)
        await call.answer({"embedding": []})
        return
    if not isinstance(body.prompt, str):
        raise WorkerError(ErrorCode.INVALID_REQUEST, "prompt: must be a string", param="prompt")

    async def deliver(result: Embeddings) -> None:
        await call.answer({"embedding": result.vectors[0]})

    request = EmbeddingRequest(
        inputs=(body.prompt,),
        caller=call.caller,
        transport="ollama",
        model=body.model or None,
        field="prompt",
        truncate=body.truncate,
        keep_alive=keep,
    )
    await embed(call.state, request, deliver)


routes = (
    JsonRoute(
        "/api/embed", EmbedBody, embed_route, summary="Embeddings (Ollama-compatible)", tag=TAG
    ),
    JsonRoute(
        "/api/embeddings",
        LegacyEmbedBody,
        embeddings_route,
        summary="One embedding (Ollama's older API)",
        tag=TAG,
    ),
)
