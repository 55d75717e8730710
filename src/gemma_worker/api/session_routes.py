"""Session routes: list, read and delete conversations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from gemma_worker.api.auth import principal_of
from gemma_worker.api.deps import State
from gemma_worker.api.errors import error_response
from gemma_worker.api.schemas import (
    ErrorResponse,
    SessionDetail,
    SessionList,
    SessionSummary,
    TurnBody,
)
from gemma_worker.core.errors import WorkerError
from gemma_worker.sessions.store import SessionInfo

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "SESSION_NOT_FOUND"}
}


def _summary(info: SessionInfo) -> SessionSummary:
    return SessionSummary(
        id=info.id,
        created=info.created,
        updated=info.updated,
        turns=info.turns,
        tokens=info.tokens,
        format=info.format,
        system=info.system,
        model=info.model,
        title=info.title,
    )


@router.get("", response_model=SessionList, summary="List sessions")
async def list_sessions(
    request: Request,
    state: State,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most sessions to return.")] = 100,
) -> SessionList:
    """Sessions, most recently used first."""
    infos = await state.sessions.list_sessions(owner=principal_of(request.scope), limit=limit)
    return SessionList(sessions=[_summary(i) for i in infos])


@router.get(
    "/{session_id}", response_model=SessionDetail, responses=_NOT_FOUND, summary="Read a session"
)
async def get_session(
    session_id: str, request: Request, state: State
) -> SessionDetail | JSONResponse:
    """The session and its turns, oldest first."""
    try:
        info, turns = await state.sessions.get(session_id, owner=principal_of(request.scope))
    except WorkerError as exc:
        return error_response(request, exc)
    return SessionDetail(
        **_summary(info).model_dump(),
        history=[
            TurnBody(
                user=t.user,
                assistant=t.assistant,
                prompt_tokens=t.prompt_tokens,
                completion_tokens=t.completion_tokens,
            )
            for t in turns
        ],
    )


@router.delete("/{session_id}", responses=_NOT_FOUND, summary="Delete a session")
async def delete_session(session_id: str, request: Request, state: State) -> JSONResponse:
    """Forget the session, its turns and its KV cache. Using it afterwards is
    ``SESSION_NOT_FOUND``."""
    try:
        await state.sessions.delete(session_id, owner=principal_of(request.scope))
    except WorkerError as exc:
        return error_response(request, exc)
    return JSONResponse({"status": "deleted", "session_id": session_id})
