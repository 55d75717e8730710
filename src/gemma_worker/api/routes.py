"""Service routes: ``/``, ``/health``, ``/ready``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gemma_worker import __version__
from gemma_worker.api.auth import principal_of
from gemma_worker.api.deps import State
from gemma_worker.api.schemas import (
    HealthResponse,
    ReadyResponse,
)
from gemma_worker.runtime.lifecycle import Phase

log = logging.getLogger(__name__)

router = APIRouter()

NDJSON = "application/x-ndjson"


@router.get("/", summary="Service information")
async def info(state: State, request: Request) -> dict[str, Any]:
    """Name, version, the default model and endpoints."""
    engine = state.default_engine
    model = None if engine is None else engine.info
    return {
        "name": "FazAI Gemma Worker",
        "version": __version__,
        "status": state.lifecycle.phase.value,
        "worker_id": state.worker_id_for(principal_of(request.scope)),
        "model": None if model is None else model.to_dict(),
        "kernels": state.settings.kernel_choices().to_dict(),
        "endpoints": {
            "health": "GET /health",
            "ready": "GET /ready",
            "execute": "POST /v1/execute",
            "sessions": "GET /v1/sessions, GET|DELETE /v1/sessions/{id}",
            "websocket": "WS /ws",
            "openai": "GET /v1/models, POST /v1/chat/completions, POST /v1/completions",
            "models": "GET /v1/models, POST /models/load, POST /models/unload",
            "ollama": "GET /api/tags, GET /api/ps, POST /api/show, POST /api/generate, "
            "POST /api/chat",
            "tokenizer": "POST /tokenize, POST /detokenize",
            "docs": "GET /docs",
            "openapi": "GET /openapi.json",
        },
    }


@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> HealthResponse:
    """200 while the process runs."""
    return HealthResponse(version=__version__)


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse}},
    summary="Readiness",
)
async def ready(state: State) -> JSONResponse:
    """200 once the default model has loaded; 503 while loading, after a failed load, when a
    loaded model's engine stopped, or draining. ``model`` describes the default model while
    it is loaded (with a models folder it may be unloaded while idle: still ready)."""
    engine = state.default_engine
    model = None if engine is None else engine.info
    phase = state.lifecycle.phase
    if phase is Phase.READY and not state.models.healthy():
        phase = Phase.FAILED  # an engine stopped after loading
    body = ReadyResponse(status=phase.value, model_loaded=model is not None)
    if phase is Phase.READY:
        stats = state.stats()
        identity = None if engine is None else engine.identity
        body = ReadyResponse(
            status="ready",
            model_loaded=model is not None,
            # only the file name: /ready answers without a key, directories are nobody's business
            model_file=None if identity is None else identity.file_name,
            model=None if model is None else model.to_dict(),
            slots=stats.slots,
            active=stats.active,
            queued=stats.queued,
        )
        return JSONResponse(body.model_dump())
    return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
