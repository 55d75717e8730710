"""Running one request: validate, plan its session turn, submit, translate engine events to
protocol events, record the finished turn. Shared by the WebSocket and REST endpoints so both
speak the same events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from gemma_worker.api.ratelimit import Lease
from gemma_worker.api.state import WorkerState
from gemma_worker.core import events as ev
from gemma_worker.core.request import GenerationRequest, new_id
from gemma_worker.engine.job import GenerationHandle
from gemma_worker.engine.messages import (
    EngineEvent,
    Failed,
    Finished,
    Queued,
    Started,
    Text,
    Trimmed,
)
from gemma_worker.sessions.service import TurnPlan

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """A submitted request, the session turn it is, its rate-limit lease, and the ids it
    reports under."""

    handle: GenerationHandle
    request_id: str
    turn: TurnPlan
    lease: Lease
    transport: str

    @property
    def session_id(self) -> str:
        """The session this request belongs to."""
        return self.turn.session_id

    def release(self) -> None:
        """Free the session for its next turn and end the rate-limit lease (idempotent)."""
        self.turn.release()
        self.lease.release()


async def start_generation(
    state: WorkerState,
    req: GenerationRequest,
    *,
    owner: str | None,
    identity: str,
    transport: str,
) -> Generation:
    """Check readiness, limits and rate limits, plan the session turn and submit it.

    ``owner`` is the API key id the request came with (sessions belong to it); ``identity``
    is who it counts against for rate limits. Raises
    :class:`~gemma_worker.core.errors.WorkerError` (``INVALID_REQUEST``, ``OVERLOADED``,
    ``RATE_LIMITED``, ``SESSION_NOT_FOUND``, ``SESSION_BUSY``...) before anything is queued.
    The session and the lease stay held until the events are consumed
    (:func:`protocol_events`) or the generation is dropped.
    """
    state.admit()
    params = state.limits.resolve(req)
    fmt = state.engine.renderer.resolve(req.prompt_format)
    lease = await state.limiter.admit(identity)
    try:
        turn = await state.sessions.begin(req, fmt, owner)
    except BaseException:
        lease.release()
        raise
    request_id = req.request_id or new_id()
    try:
        handle = state.engine.submit(turn.conversation, params, request_id, turn.session_id)
    except BaseException:
        turn.release()
        lease.release()
        raise
    log.info(
        "request accepted",
        extra={
            "request_id": request_id,
            "session_id": turn.session_id,
            "history_turns": len(turn.conversation.history),
            "input_chars": len(req.input),
            "max_tokens": params.max_tokens,
            "format": turn.conversation.format,
        },
    )
    return Generation(handle, request_id, turn, lease, transport)


def to_protocol(gen: Generation, event: EngineEvent, content: str) -> ev.Event:
    """The protocol event for one engine event; ``content`` is the text so far (for results)."""
    rid = gen.request_id
    match event:
        case Text(text=text):
            return ev.token_event(rid, text)
        case Trimmed(dropped_turns=dropped, kept_turns=kept):
            return ev.reasoning_event(
                rid,
                f"the history does not fit the context: left out the {dropped} oldest turns",
                stage="context",
                dropped_turns=dropped,
                kept_turns=kept,
            )
        case Queued(position=position):
            return ev.reasoning_event(
                rid, f"queued at position {position}", stage="queued", queue_position=position
            )
        case Started(n_prompt_tokens=n, n_cached_tokens=cached):
            note = f" ({cached} reused from the session cache)" if cached else ""
            return ev.reasoning_event(
                rid,
                f"processing {n - cached} prompt tokens{note}",
                stage="prompt",
                n_prompt_tokens=n,
                n_cached_tokens=cached,
            )
        case Finished():
            return ev.result_event(
                request_id=rid,
                session_id=gen.session_id,
                content=content,
                finish_reason=event.finish_reason,
                usage=ev.Usage(event.prompt_tokens, event.completion_tokens, event.cached_tokens),
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

    A finished (not cancelled) turn is stored in its session before the ``result`` goes out,
    so a client that sends its next turn on receipt sees it in the history. Leaving early
    (client gone) cancels the generation. ``replay`` holds engine events the caller already
    took from the handle; they are sent first.
    """
    state.request_started(gen.handle)
    parts: list[str] = []
    pending = list(replay)
    writing: asyncio.Future[None] | None = None
    try:
        turn = gen.turn
        yield ev.session_event(
            gen.session_id, gen.request_id, new=turn.is_new, turns=len(turn.conversation.history)
        )
        while True:
            event = pending.pop(0) if pending else await gen.handle.next_event()
            if isinstance(event, Text):
                parts.append(event.text)
            if isinstance(event, Finished):
                _account(state, gen, event)
                if event.finish_reason != "cancelled":
                    writing = asyncio.ensure_future(
                        state.sessions.record(
                            turn, "".join(parts), event.prompt_tokens, event.completion_tokens
                        )
                    )
                    # If the client leaves now, the session stays claimed until the turn is
                    # written, so its next turn cannot read the history without it.
                    await asyncio.shield(writing)
                    writing = None
            yield to_protocol(gen, event, "".join(parts) if isinstance(event, Finished) else "")
            if isinstance(event, Finished | Failed):
                return
    finally:
        state.request_ended(gen.handle)
        if not gen.handle.done:
            # The client left: the engine stops within a step. Its tokens still count against
            # the client's limits, and the session stays claimed until then.
            gen.handle.cancel()
            state.spawn(_settle(state, gen))
        elif writing is not None and not writing.done():
            writing.add_done_callback(lambda _: gen.release())
        else:
            gen.release()


async def _settle(state: WorkerState, gen: Generation) -> None:
    """Wait for a generation whose client left to end, then account for it and release it."""
    try:
        async with asyncio.timeout(60):
            while not gen.handle.done:
                event = await gen.handle.next_event()
                if isinstance(event, Finished):
                    _account(state, gen, event)
    except Exception:
        log.exception("could not settle a cancelled generation")
    finally:
        gen.release()


def _account(state: WorkerState, gen: Generation, event: Finished) -> None:
    gen.lease.charge(event.completion_tokens)
    state.metrics.finished(
        gen.transport,
        event.finish_reason,
        prompt_tokens=event.prompt_tokens,
        cached_tokens=event.cached_tokens,
        completion_tokens=event.completion_tokens,
        queue_ms=event.queue_ms,
        ttft_ms=event.ttft_ms,
        tokens_per_second=event.tokens_per_second,
    )
