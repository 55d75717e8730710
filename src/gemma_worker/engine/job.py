"""One generation as the engine and the event loop both see it."""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from gemma_worker.core.conversation import Conversation
from gemma_worker.core.request import SamplingParams
from gemma_worker.engine.channel import EventChannel
from gemma_worker.engine.messages import EngineEvent, Failed, Finished


@dataclass(eq=False)
class Job:
    """Shared between threads: the loop sets ``cancelled``; the engine reads it between steps
    and reports through ``channel``. ``cache_key`` names the conversation (a session id) whose
    KV cache the engine may keep after the job and reuse for the next job with the same key."""

    request_id: str
    conversation: Conversation
    params: SamplingParams
    channel: EventChannel[EngineEvent]
    cache_key: str | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False


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
