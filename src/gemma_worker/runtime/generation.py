"""A submitted generation, whatever API it came through (made by
:func:`gemma_worker.runtime.pipeline.start_generation`).

:meth:`Generation.events` yields typed events: the engine's, with the text of a request that
offered tools split into content and tool-call deltas. It charges the tokens, counts the
metrics and records a session's finished turn; each dialect only encodes the events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field

from gemma_worker.core.tool_stream import (
    ContentDelta,
    ToolCallArguments,
    ToolCallStart,
    ToolCallStream,
    ToolDelta,
)
from gemma_worker.engine.job import GenerationHandle
from gemma_worker.engine.messages import (
    Failed,
    Finished,
    Queued,
    Started,
    Text,
    TokenLogprob,
    Trimmed,
)
from gemma_worker.runtime.models import ModelUse
from gemma_worker.runtime.ratelimit import Admission
from gemma_worker.runtime.state import WorkerState
from gemma_worker.sessions.service import TurnPlan

log = logging.getLogger(__name__)

#: Everything a dialect encodes, in order: ``Trimmed``? ``Queued``* ``Started``, then ``Text``,
#: ``ToolCallStart`` and ``ToolCallArguments`` deltas, then ``Finished`` or ``Failed``.
GenerationEvent = (
    Trimmed | Queued | Started | Text | ToolCallStart | ToolCallArguments | Finished | Failed
)


@dataclass(eq=False)
class Generation:
    """A submitted generation: its events, its rate-limit admission and the session turn it
    is (``turn``, ``None`` outside sessions; its claim is given back when the generation is
    released). The drain waits for it until it is released."""

    state: WorkerState
    handle: GenerationHandle
    request_id: str
    admission: Admission
    transport: str
    #: The model it runs on (held until the generation is released).
    model: ModelUse
    tools: bool = False
    turn: TurnPlan | None = None
    keep_alive: float | None = None
    _parts: list[str] = field(default_factory=list)
    _released: bool = False
    _writing: asyncio.Future[None] | None = None

    async def events(self) -> AsyncGenerator[GenerationEvent, None]:
        """Every event up to ``Finished``/``Failed``. Before a final event is yielded: a
        finished generation's tokens are charged to the client's limits and counted in the
        metrics, a finished (not cancelled) session turn is stored, and the client's place
        under its concurrency cap and its session's claim are given back, so a client that
        sends its next request on receipt finds the history written and the session free,
        on any replica."""
        parser = ToolCallStream(enabled=self.tools)
        while not self.handle.done:
            event = await self.handle.next_event()
            if isinstance(event, Text):
                self._parts.append(event.text)
                if self.tools:
                    for delta in _deltas(parser.feed(event.text), event.logprobs):
                        yield delta
                    continue
            if isinstance(event, Finished):
                self._account(event)
                for delta in _deltas(parser.finish(), ()):
                    yield delta
                if event.finish_reason != "cancelled":
                    await self._record(self.text, event)
            if isinstance(event, Finished | Failed):
                await self.admission.end()
                if self.turn is not None:
                    await self.state.sessions.end_turn(self.turn)
            yield event

    @property
    def text(self) -> str:
        """The text generated so far (as the engine wrote it, tool calls included)."""
        return "".join(self._parts)

    async def _record(self, answer: str, event: Finished) -> None:
        if self.turn is None:
            return
        usage = event.usage
        self._writing = asyncio.ensure_future(
            self.state.sessions.record(
                self.turn, answer, usage.prompt_tokens, usage.completion_tokens
            )
        )
        # If the client leaves now, the session stays claimed until the turn is written
        # (release waits for it), so its next turn cannot read the history without it.
        await asyncio.shield(self._writing)

    def release(self) -> None:
        """The caller is done with the events (soon, never blocking; idempotent). A generation
        still running (its client left) is cancelled; its tokens are still charged and its
        cleanups run once the engine has stopped it."""
        if self.handle.done:
            self._finish()
        else:
            self.handle.cancel()
            self.state.lifecycle.spawn(self._settle())

    def _finish(self) -> None:
        """Give back the session's claim and the admission (idempotent), once the turn is
        written."""
        if self._writing is not None and not self._writing.done():
            self._writing.add_done_callback(lambda _: self._finish())
            return
        if self._released:
            return
        self._released = True
        if self.turn is not None:
            self.turn.release()
        self.admission.release()
        self.state.lifecycle.request_ended(self.handle)
        self.model.release(self.keep_alive)

    async def _settle(self) -> None:
        try:
            async with asyncio.timeout(60):
                while not self.handle.done:
                    event = await self.handle.next_event()
                    if isinstance(event, Finished):
                        self._account(event)
        except Exception:
            log.exception("could not settle a cancelled generation")
        finally:
            self._finish()

    def _account(self, event: Finished) -> None:
        self.admission.charge(event.usage.completion_tokens)
        self.state.metrics.finished(
            self.transport, self.model.spec.id, event.finish_reason, event.usage, event.timings
        )


def _deltas(
    deltas: Iterable[ToolDelta], logprobs: tuple[TokenLogprob, ...]
) -> Iterable[Text | ToolCallStart | ToolCallArguments]:
    for delta in deltas:
        if isinstance(delta, ContentDelta):
            yield Text(delta.text, logprobs)
            logprobs = ()
        else:
            yield delta
