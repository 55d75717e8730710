"""The native protocol's encoder: the pipeline's typed events as ND-JSON protocol events
(``session``, ``reasoning``, ``token``, ``result``, ``error``), for ``/ws`` and ``POST
/v1/execute``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from gemma_worker.core import events as ev
from gemma_worker.engine.messages import Failed, Finished, Queued, Started, Text, Trimmed
from gemma_worker.runtime.generation import Generation, GenerationEvent


class NativeEncoder:
    """Encodes one native generation (a session turn)."""

    def __init__(self, gen: Generation) -> None:
        assert gen.turn is not None, "a native generation is a session turn"
        self.gen = gen
        self.turn = gen.turn
        self.rid = gen.request_id

    @property
    def session_id(self) -> str:
        """The session the generation belongs to."""
        return self.turn.session_id

    def session(self) -> ev.Event:
        """The ``session`` event every answer starts with."""
        turn = self.turn
        return ev.session_event(
            turn.session_id,
            self.rid,
            new=turn.is_new,
            turns=len(turn.conversation.history),
            stateless=not turn.stored,
            model=self.gen.model.spec.id,
        )

    def encode(self, event: GenerationEvent) -> ev.Event | None:
        """The protocol event for one pipeline event (``None``: the protocol has none)."""
        match event:
            case Text(text=text):
                return ev.token_event(self.rid, text)
            case Trimmed(dropped_turns=dropped, kept_turns=kept):
                return ev.reasoning_event(
                    self.rid,
                    f"the history does not fit the context: left out the {dropped} oldest turns",
                    stage="context",
                    dropped_turns=dropped,
                    kept_turns=kept,
                )
            case Queued(position=position):
                return ev.reasoning_event(
                    self.rid,
                    f"queued at position {position}",
                    stage="queued",
                    queue_position=position,
                )
            case Started(n_prompt_tokens=n, n_cached_tokens=cached):
                note = f" ({cached} reused from the cache)" if cached else ""
                return ev.reasoning_event(
                    self.rid,
                    f"processing {n - cached} prompt tokens{note}",
                    stage="prompt",
                    n_prompt_tokens=n,
                    n_cached_tokens=cached,
                )
            case Finished():
                return ev.result_event(
                    request_id=self.rid,
                    session_id=self.session_id,
                    content=self.gen.text,
                    finish_reason=event.finish_reason,
                    usage=event.usage,
                    timings=event.timings,
                    model=self.gen.model.spec.id,
                )
            case Failed(error=error):
                return ev.error_event(error, self.rid)
        return None


async def native_events(gen: Generation) -> AsyncGenerator[ev.Event, None]:
    """``session`` then every protocol event up to ``result``/``error``. Closed at any point
    (client gone), the generation is cancelled and released."""
    encoder = NativeEncoder(gen)
    try:
        yield encoder.session()
        async with contextlib.aclosing(gen.events()) as events:
            async for event in events:
                out = encoder.encode(event)
                if out is not None:
                    yield out
    finally:
        gen.release()
