"""Running one request: validate, render the prompt, submit, translate engine events to
protocol events. Shared by the WebSocket and REST endpoints so both speak the same events."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from gemma_worker.api.state import WorkerState
from gemma_worker.core import events as ev
from gemma_worker.core.request import GenerationRequest
from gemma_worker.engine.job import GenerationHandle
from gemma_worker.engine.messages import EngineEvent, Failed, Finished, Queued, Started, Text

log = logging.getLogger(__name__)


def new_id() -> str:
    """A fresh random (UUID4) id."""
    return str(uuid.uuid4())


@dataclass
class Generation:
    """A submitted request and the ids it reports under."""

    handle: GenerationHandle
    request_id: str
    session_id: str


def start_generation(state: WorkerState, req: GenerationRequest) -> Generation:
    """Check limits and readiness, render the prompt and submit it to the engine.

    Raises :class:`~gemma_worker.core.errors.WorkerError` (``INVALID_REQUEST``,
    ``OVERLOADED``...) before anything is queued.
    """
    state.admit()
    params = state.limits.resolve(req)
    prompt = state.engine.renderer.render(req.input, req.prompt_format)
    request_id = req.request_id or new_id()
    session_id = req.session_id or new_id()
    handle = state.engine.submit(prompt, params, request_id)
    log.info(
        "request accepted",
        extra={
            "request_id": request_id,
            "session_id": session_id,
            "input_chars": len(req.input),
            "max_tokens": params.max_tokens,
            "format": prompt.format,
        },
    )
    log.debug("prompt", extra={"request_id": request_id, "prompt": prompt.text})
    return Generation(handle, request_id, session_id)


def to_protocol(gen: Generation, event: EngineEvent, content: str) -> ev.Event:
    """The protocol event for one engine event; ``content`` is the text so far (for results)."""
    rid = gen.request_id
    match event:
        case Text(text=text):
            return ev.token_event(rid, text)
        case Queued(position=position):
            return ev.reasoning_event(
                rid, f"queued at position {position}", stage="queued", queue_position=position
            )
        case Started(n_prompt_tokens=n):
            return ev.reasoning_event(
                rid, f"processing {n} prompt tokens", stage="prompt", n_prompt_tokens=n
            )
        case Finished():
            return ev.result_event(
                request_id=rid,
                session_id=gen.session_id,
                content=content,
                finish_reason=event.finish_reason,
                usage=ev.Usage(event.prompt_tokens, event.completion_tokens),
                timings=ev.Timings(
                    queue_ms=event.queue_ms,
                    ttft_ms=event.ttft_ms,
                    tokens_per_second=event.tokens_per_second,
                    total_ms=event.total_ms,
                ),
            )
        case Failed(error=error):
            return ev.error_event(error, rid)
    raise AssertionError(f"unknown engine event {event!r}")


async def protocol_events(
    state: WorkerState, gen: Generation, replay: Sequence[EngineEvent] = ()
) -> AsyncGenerator[ev.Event, None]:
    """``session`` then every event up to ``result``/``error``.

    Leaving early (client gone) cancels the generation. ``replay`` holds engine events the
    caller already took from the handle; they are sent first.
    """
    state.request_started(gen.handle)
    parts: list[str] = []
    pending = list(replay)
    try:
        yield ev.session_event(gen.session_id, gen.request_id)
        while True:
            event = pending.pop(0) if pending else await gen.handle.next_event()
            if isinstance(event, Text):
                parts.append(event.text)
            yield to_protocol(gen, event, "".join(parts) if isinstance(event, Finished) else "")
            if isinstance(event, Finished | Failed):
                return
    finally:
        if not gen.handle.done:
            gen.handle.cancel()
        state.request_ended(gen.handle)
