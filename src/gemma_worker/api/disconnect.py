"""Running a REST request's work only while its client is still there."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from fastapi import Request

from gemma_worker.engine.messages import Queued, Started, Trimmed
from gemma_worker.runtime.generation import Generation, GenerationEvent


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, task: asyncio.Future[Any]) -> bool:
    """Wait for ``task`` or the client to leave; whether ``task`` finished. If the client left
    first, ``task`` is cancelled (and awaited)."""
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def first_decisive(
    gen: Generation, request: Request
) -> tuple[list[GenerationEvent], AsyncGenerator[GenerationEvent, None]] | None:
    """The generation's events up to the first that is not queue or prompt progress (so a
    rejection found by the engine still gets its HTTP status), and the iterator of the rest.
    ``None`` when the client left first: the generation is then closed (its slot freed)."""
    events = gen.events()

    async def head() -> list[GenerationEvent]:
        taken: list[GenerationEvent] = []
        async for event in events:
            taken.append(event)
            if not isinstance(event, Queued | Started | Trimmed):
                break
        return taken

    task = asyncio.ensure_future(head())
    try:
        finished = await unless_disconnected(request, task)
    except asyncio.CancelledError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # it must stop iterating before the generator can be closed
        await events.aclose()
        gen.release()
        raise
    if not finished:
        await events.aclose()
        gen.release()
        return None
    return task.result(), events


async def replay(
    taken: Sequence[GenerationEvent], rest: AsyncGenerator[GenerationEvent, None]
) -> AsyncGenerator[GenerationEvent, None]:
    """The events :func:`first_decisive` took, then the rest (closing ``rest`` at the end)."""
    try:
        for event in taken:
            yield event
        async for event in rest:
            yield event
    finally:
        await rest.aclose()
