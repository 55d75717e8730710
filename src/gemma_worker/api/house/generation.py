"""A house-protocol request: plan its session turn, run it on the generation core, encode the
core's events as ND-JSON protocol events, record the finished turn. Shared by ``/ws`` and
``POST /v1/execute``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from gemma_worker.api.disconnect import replay
from gemma_worker.api.state import WorkerState
from gemma_worker.core import events as ev
from gemma_worker.core.request import GenerationRequest, new_id
from gemma_worker.core.response_format import grammar_for
from gemma_worker.engine.job import GenerationSpec
from gemma_worker.engine.messages import Failed, Finished, Queued, Started, Text, Trimmed
from gemma_worker.service.generation import (
    Generation,
    GenerationEvent,
    compile_output_grammar,
    start_generation,
)
from gemma_worker.sessions.service import TurnPlan


@dataclass(eq=False)
class HouseGeneration:
    """A submitted house request and the session turn it is."""

    gen: Generation
    turn: TurnPlan

    @property
    def request_id(self) -> str:
        """The request's id."""
        return self.gen.request_id

    @property
    def session_id(self) -> str:
        """The session this request belongs to."""
        return self.turn.session_id


async def start_house_generation(
    state: WorkerState,
    req: GenerationRequest,
    *,
    owner: str | None,
    identity: str,
    transport: str,
    may_create: bool = False,
) -> HouseGeneration:
    """Check the request, plan its session turn and submit it.

    ``owner`` is the API key id the request came with (sessions and cached prefixes belong to
    it); ``identity`` is who it counts against for rate limits. Raises
    :class:`~gemma_worker.core.errors.WorkerError` before anything is queued. The session
    stays claimed until the events are consumed (:func:`house_events`) or the request dropped.
    ``may_create``: the named session is the connection's own and may not exist yet.
    """
    state.admit()
    params = state.limits.resolve(req)
    fmt = state.engine.renderer.resolve(req.prompt_format)
    fmt_spec = req.response_format
    grammar = await compile_output_grammar(
        state, lambda: grammar_for(fmt_spec), "response_format", params
    )
    turn = await state.sessions.begin(req, fmt, owner, may_create=may_create)
    spec = GenerationSpec(
        request_id=req.request_id or new_id(),
        prompt=turn.conversation,
        params=params,
        scope=owner,
        session=turn.session_id if turn.stored else None,
        grammar=grammar,
    )
    gen = await start_generation(
        state, spec, identity=identity, transport=transport, cleanups=[turn.release]
    )
    return HouseGeneration(gen, turn)


def to_protocol(hg: HouseGeneration, event: GenerationEvent, content: str) -> ev.Event | None:
    """The protocol event for one core event (``None``: the house protocol has none for it);
    ``content`` is the text so far (for results)."""
    rid = hg.request_id
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
            note = f" ({cached} reused from the cache)" if cached else ""
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
                session_id=hg.session_id,
                content=content,
                finish_reason=event.finish_reason,
                usage=event.usage,
                timings=event.timings,
            )
        case Failed(error=error):
            return ev.error_event(error, rid)
    return None


async def turn_events(
    state: WorkerState,
    hg: HouseGeneration,
    taken: Sequence[GenerationEvent] = (),
    rest: AsyncGenerator[GenerationEvent, None] | None = None,
) -> AsyncGenerator[GenerationEvent, None]:
    """The core's events for this turn (``taken`` first, when the caller already took some from
    the iterator ``rest``). A finished (not cancelled) turn is stored in its session before
    ``Finished`` is yielded, and the session's claim is released before the final event, so a
    client that sends its next turn on receipt sees it in the history and finds the session
    free. Leaving early (client gone) cancels the generation."""
    gen, turn = hg.gen, hg.turn
    parts: list[str] = []
    writing: asyncio.Future[None] | None = None
    source = replay(taken, rest) if rest is not None else gen.events()
    try:
        async with contextlib.aclosing(source) as stream:
            async for event in stream:
                if isinstance(event, Text):
                    parts.append(event.text)
                if isinstance(event, Finished) and event.finish_reason != "cancelled":
                    usage = event.usage
                    writing = asyncio.ensure_future(
                        state.sessions.record(
                            turn, "".join(parts), usage.prompt_tokens, usage.completion_tokens
                        )
                    )
                    # If the client leaves now, the session stays claimed until the turn is
                    # written, so its next turn cannot read the history without it.
                    await asyncio.shield(writing)
                    writing = None
                if isinstance(event, Finished | Failed):
                    await state.sessions.end_turn(turn)
                yield event
    finally:
        if writing is not None and not writing.done():
            writing.add_done_callback(lambda _: gen.close())
        else:
            gen.close()


async def house_events(
    state: WorkerState,
    hg: HouseGeneration,
    taken: Sequence[GenerationEvent] = (),
    rest: AsyncGenerator[GenerationEvent, None] | None = None,
) -> AsyncGenerator[ev.Event, None]:
    """``session`` then every protocol event up to ``result``/``error``. Closed at any point
    (client gone), the generation is cancelled and released."""
    turn = turn_events(state, hg, taken, rest)
    try:
        yield ev.session_event(
            hg.session_id,
            hg.request_id,
            new=hg.turn.is_new,
            turns=len(hg.turn.conversation.history),
            stateless=not hg.turn.stored,
        )
    except BaseException:
        # turn_events never started, so its own cleanup will not run
        if rest is not None:
            await rest.aclose()
        hg.gen.close()
        raise
    parts: list[str] = []
    async with contextlib.aclosing(turn) as events:
        async for event in events:
            if isinstance(event, Text):
                parts.append(event.text)
            out = to_protocol(hg, event, "".join(parts))
            if out is not None:
                yield out
