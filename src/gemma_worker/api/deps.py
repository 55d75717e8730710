"""FastAPI dependencies: handlers reach the app's state through these, never a global."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gemma_worker.runtime.state import WorkerState


async def get_state(request: Request) -> WorkerState:
    """Dependency: the app's :class:`WorkerState`. A coroutine on purpose: FastAPI runs a
    plain function dependency in its thread pool, a thread hop on every request."""
    state: WorkerState = request.app.state.worker
    return state


State = Annotated[WorkerState, Depends(get_state)]
