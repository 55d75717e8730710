"""One generation as the engine and the event loop both see it."""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from gemma_worker.core.conversation import Conversation
from gemma_worker.core.sampling import SamplingParams
from gemma_worker.engine.channel import EventChannel
from gemma_worker.engine.grammar import Grammar
from gemma_worker.engine.messages import EngineEvent, Failed, Finished
from gemma_worker.engine.prompt import Prompt


@dataclass(frozen=True, slots=True, eq=False)
class GenerationSpec:
    """What to generate: the engine's one input type, whatever API the request came through.

    ``prompt`` is a conversation (rendered by the engine; with ``trim_history`` its oldest
    turns are left out if it does not fit, else it is refused) or raw text. The KV cache a
    request leaves behind may be reused by any later request of the same ``scope`` (an API key
    id; ``None`` when keys are off) whose prompt starts with the same tokens. ``session`` names
    a session whose cache may also be saved to disk when its slot is taken, and is dropped
    with :meth:`Engine.forget`. ``grammar`` constrains the output; ``top_logprobs`` (0-20)
    asks for log-probabilities of each token.
    """

    request_id: str
    prompt: Conversation | Prompt
    params: SamplingParams
    scope: str | None = None
    session: str | None = None
    grammar: Grammar | None = None
    top_logprobs: int | None = None
    trim_history: bool = True
    #: Whom the request counts for when the worker is shared out (an API key id, else the
    #: client's address): see :mod:`gemma_worker.core.fairness`.
    client: str = "anonymous"


@dataclass(eq=False)
class Job:
    """Shared between threads: the loop sets ``cancelled``; the engine reads it between steps
    and reports through ``channel``."""

    spec: GenerationSpec
    channel: EventChannel[EngineEvent]
    submitted_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    #: The spec's parameters, with ``max_tokens`` fitted to the context once the prompt is known.
    params: SamplingParams = field(init=False)
    #: Whether the rendered prompt parses special tokens (a chat prompt); set when prepared.
    parse_special: bool = False

    def __post_init__(self) -> None:
        self.params = self.spec.params

    @property
    def request_id(self) -> str:
        """The request's id."""
        return self.spec.request_id


def _abandon(job: Job, wake: Callable[[], None]) -> None:
    if not job.cancelled:
        job.cancelled = True
        wake()


class GenerationHandle:
    """The client side of a submitted generation: iterate its events, or cancel it.

    Leaving the iteration early (the client went away) cancels the generation, so the engine
    frees its slot within one step.
    """

    def __init__(self, job: Job, wake: Callable[[], None]) -> None:
        self._job = job
        self._wake = wake
        self.done = False
        # A handle dropped unread (e.g. a streamed response the client left before it began)
        # must not hold its slot: cancelling a finished job is a no-op for the engine.
        weakref.finalize(self, _abandon, job, wake)

    @property
    def request_id(self) -> str:
        """The request's id."""
        return self._job.request_id

    def cancel(self) -> None:
        """Ask the engine to stop this generation; it ends with ``finish_reason: cancelled``."""
        if not self._job.cancelled and not self.done:
            self._job.cancelled = True
            self._wake()

    async def next_event(self) -> EngineEvent:
        """The next event; after ``Finished``/``Failed`` there are no more."""
        event = await self._job.channel.get()
        if isinstance(event, Finished | Failed):
            self.done = True
        return event

    async def events(self) -> AsyncIterator[EngineEvent]:
        """All events up to and including the final one."""
        try:
            while not self.done:
                yield await self.next_event()
        finally:
            if not self.done:
                self.cancel()
