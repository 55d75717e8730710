"""Loading and unloading models by hand, in llama-server's router shapes: ``GET /models``,
``POST /models/load`` and ``POST /models/unload`` with ``{"model": "<name>"}``.

With API keys on, load and unload need a key marked ``admin``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from gemma_worker.api.auth import grant_of
from gemma_worker.api.deps import State
from gemma_worker.api.errors import error_response
from gemma_worker.api.openai.routes import list_models
from gemma_worker.api.openai.types import ModelList
from gemma_worker.core.errors import ErrorCode, WorkerError

router = APIRouter(tags=["models"])


class ModelAction(BaseModel):
    """The body of ``/models/load`` and ``/models/unload``."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=200, description="The model's id or alias.")


def _admin_only(request: Request) -> None:
    if not grant_of(request.scope).admin:
        raise WorkerError(
            ErrorCode.FORBIDDEN, "loading and unloading models needs an admin API key"
        )


@router.get("/models", response_model=ModelList, summary="The models (llama-server's route)")
async def models(request: Request, state: State) -> ModelList:
    """The same list as ``GET /v1/models``."""
    return await list_models(request, state)


@router.post("/models/load", summary="Load a model (admin)")
async def load(body: ModelAction, request: Request, state: State) -> Any:
    """Load the model now (it then unloads after its keep-alive, as after a request);
    answers once it is loaded."""
    try:
        _admin_only(request)
        state.lifecycle.admit()
        spec = await state.models.load(body.model)
    except WorkerError as exc:
        return error_response(request, exc)
    return {"success": True, "model": spec.id, "status": "loaded"}


@router.post("/models/unload", summary="Unload a model (admin)")
async def unload(body: ModelAction, request: Request, state: State) -> Any:
    """Unload the model now, or as soon as the requests running on it end."""
    try:
        _admin_only(request)
        spec = state.models.registry.resolve(body.model)
        was_loaded = await state.models.unload(spec.id)
    except WorkerError as exc:
        return error_response(request, exc)
    return {"success": True, "model": spec.id, "was_loaded": was_loaded}
